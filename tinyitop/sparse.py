"""Truly sparse layers: SparseLinear and SparseConv2d keep their weight as a CSR matrix.

SET (Mocanu et al. 2018) and ITOP (Liu et al. 2021) train such layers from scratch. Here the weight
*is* a `scipy.sparse` / `cupyx.scipy.sparse` CSR matrix (out, in) or (out, in*kh*kw): no dense weight
and no dense mask exist. Below a measured crossover density forward is
CSR @ dense, dx is CSR^T @ dense, and the weight gradient is computed only at the nonzeros (a
sampled dense-dense product, SDDMM); above it, where the device's dense kernels are faster, the
CSR's values are scattered into a dense buffer for the products (`choose_paths`). Either way the
weight, its gradient and the optimizer state stay sized by the number of nonzeros.
"""
import math
import os
from concurrent.futures import ThreadPoolExecutor

from tinyitop import backend as B
from tinyitop.init import active_count, sample_positions
from tinyitop.layers import Conv2d, Module, Parameter, check_input, uniform

# ---- Which kernel for which layer: measured break-evens ---------------------------------------
# Is truly sparse training faster? Only below a density that depends on the device. A sparse layer
# does three products per step: forward W @ X, dx W^T @ dY, and the weight gradient at the nonzeros.
# Each has two paths:
#   "csr":   the CSR kernel (scipy.sparse / cuSPARSE) for W @ X and W^T @ dY;
#   "dense": the CSR's values scattered into a reused dense (out, in) buffer, then BLAS / cuBLAS;
#   "gather":     the gradient at the nonzeros only (SDDMM, `sddmm` below);
#   "dense+take": the dense gradient dY X^T, then a take at the nonzeros.
# The sparse path wins below a crossover density, measured per device by
# `python benchmarks/bench_breakeven.py` (batch 128; the tables and figure are in the README):
#   CPU (this project's 2-core EPYC, OpenBLAS, 32 MiB L3; PERF-NOTES' Xeon agrees within 1.5x):
#     SciPy's CSR kernel streams, per nonzero, one row of M values of the dense operand (X for
#     W @ X, dY for W^T @ dY); BLAS streams it once per block whatever the density. So the CSR
#     kernel is ~1.5x faster while that operand stays in the last-level cache: CSR beats BLAS up
#     to 5% when the operand fits (the MLP's layers, ResNet's 512x2304 convs at M 2048: 18 MiB),
#     and only below ~3% when it does not (every shape loses at 5%; VGG's 512x2304 conv at M 3200,
#     28 MiB, loses at 3.2%; ResNet's 512x4608 at M 2048, 36 MiB, still wins at 2.8%).
#     `bench_breakeven.py --columns` shows the step at one shape and density as M grows; 24 MiB
#     (3/4 of the L3, which also holds the output rows and the weights) is where it falls here.
#     The gather beats dense+take up to 2% on every shape (the conv 64x576 layer at 1%) and loses
#     from 5%; ResNet-18's 512x4608 layers at 2.8% still gather faster (benchmarks/bench_paths.py):
#     3%.
#   GPU (H100, this benchmark; GPU-NOTES' H200 agrees): cuSPARSE's forward beats cuBLAS only below
#     0.2-0.5% on the large layers (conv 256x2304 and up, the 10000x10000 one) and never on the
#     MLP's; CSR^T @ dY only below 0.2%; the gather only at 0.2% on the 10000x10000 layer. So 0.2%
#     for all, cache or not: at the densities ERK gives conv layers (2-38%) every product is dense.
# The thresholds are constants, not calibrated at run time, so one run always takes the same paths
# and a resumed run stays bit-identical.
PRODUCT_CSR_MAX_DENSITY = {"numpy": {"in cache": 0.05, "beyond cache": 0.03},
                           "cupy": {"in cache": 0.002, "beyond cache": 0.002}}
GATHER_MAX_DENSITY = {"numpy": 0.03, "cupy": 0.002}
OPERAND_CACHE_BYTES = 24 * 2 ** 20      # a CSR product's dense operand "in cache" up to this size
# A layer whose dense (out, in) matrix would exceed this keeps its products on CSR at any density:
# the wide 10000x10000 layer would need 400 MB per dense buffer, which is what truly sparse
# training exists to avoid. Its gradient may still take the dense path, one block of rows at a
# time within this budget ("blocked dense+take"; on the H100 at 1% density: 0.78 ms against the
# gather's 2.68). 64 MiB holds any conv layer of ResNet/VGG (the largest, 512x4608, is 9 MB) and
# the paper MLP's fc1 (12.6 MB).
DENSE_BUFFER_MAX_BYTES = 64 * 2 ** 20


def cache_state(shape, columns, itemsize):
    """"in cache" or "beyond cache": whether a CSR product's dense operand, X (in, M) for W @ X or
    dY (out, M) for W^T @ dY, the larger of the two, fits OPERAND_CACHE_BYTES."""
    return "in cache" if max(shape) * columns * itemsize <= OPERAND_CACHE_BYTES else "beyond cache"


def choose_paths(weight, columns):
    """(product path, gradient path) of a SparseWeight multiplying operands of `columns` columns
    (M), on the active backend: "csr" or "dense", and "gather", "dense+take" or "blocked
    dense+take" (see above)."""
    fits = weight.fits_dense()
    density = weight.density
    cache = cache_state(weight.shape, columns, weight.dtype.itemsize)
    product = "csr" if density < PRODUCT_CSR_MAX_DENSITY[B.name][cache] or not fits else "dense"
    if density < GATHER_MAX_DENSITY[B.name]:
        return product, "gather"
    return product, "dense+take" if fits else "blocked dense+take"


# The gather runs in chunks of nonzeros sized by bytes, since each nonzero gathers one row of M
# values from each operand (M = batch for a linear layer, batch x pixels for a conv layer): ~512 KiB
# per operand keeps both in cache on a CPU (1024 nonzeros at M = 128, 3x faster than 16k); a GPU
# wants a few large kernels instead of many small ones (128 MiB: 256k nonzeros at M = 128).
CPU_CHUNK_BYTES, GPU_CHUNK_BYTES = 512 * 2 ** 10, 128 * 2 ** 20
# On a CPU the gather visits the nonzeros by blocks of 512 input features (256 KiB of a 128-sample
# operand: stays in L2), which made the gather 1.3-1.6x faster on a 10000x10000 layer.
COLUMN_BLOCK = 512


# SciPy's sparse kernels and NumPy's gathers release the GIL, so threads use both cores.
# TINYITOP_THREADS=1 turns this off (the sweep runner does, when it runs one process per core).
def _thread_count():
    value = os.environ.get("TINYITOP_THREADS", "")
    if not value:
        return max(1, min(2, os.cpu_count() or 1))
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"TINYITOP_THREADS must be a positive integer, got {value!r}")
    return int(value)


_THREADS = _thread_count()
_pool = ThreadPoolExecutor(_THREADS) if _THREADS > 1 else None


def _parallel(tasks):
    """Run zero-argument functions; on NumPy spread them over the cores (CuPy: kernels are async)."""
    if _pool is None or B.name != "numpy" or len(tasks) == 1:
        return [task() for task in tasks]
    return list(_pool.map(lambda task: task(), tasks))


def csr_from_flat(flat, values, shape):
    """Sorted flat positions (row * n_cols + col) and their values -> CSR matrix of `shape`."""
    xp = B.xp
    n_rows, n_cols = shape
    rows = flat // n_cols
    cols = (flat - rows * n_cols).astype(xp.int32)
    indptr = xp.searchsorted(rows, xp.arange(n_rows + 1)).astype(xp.int32)  # first nnz of each row
    return B.sparse.csr_matrix((values, cols, indptr), shape=shape)


def spmm(matrix, dense):
    """CSR (or its transpose) @ dense (K, M) -> (rows, M). On NumPy, columns split over two threads."""
    xp = B.xp
    m = dense.shape[1]
    if B.name != "numpy" or _pool is None or m < 64 or matrix.nnz < 40_000:
        return xp.asarray(matrix @ dense)
    half = m // 2
    parts = _parallel([lambda: matrix @ xp.ascontiguousarray(dense[:, :half]),
                       lambda: matrix @ xp.ascontiguousarray(dense[:, half:])])
    return xp.concatenate(parts, axis=1)


def sddmm(left, right, rows, cols, order=None):
    """(left @ right.T)[rows, cols] without the dense product: left (R, M), right (C, M) -> (nnz,).

    Each nonzero is the dot product of one row of `left` with one row of `right`: both operands are
    feature-major, so every gathered row is contiguous (PERF-NOTES: 3-4x faster than column gathers).
    If `order` is given, rows/cols are already permuted by it (see SparseWeight.gather_plan) and the
    result is scattered back to CSR order.
    """
    xp = B.xp
    nnz = rows.size
    result = xp.empty(nnz, dtype=left.dtype)
    row_bytes = left.shape[1] * left.dtype.itemsize                     # one gathered row: M values
    chunk = max(16, (CPU_CHUNK_BYTES if B.name == "numpy" else GPU_CHUNK_BYTES) // row_bytes)

    def run(start, stop):
        for s in range(start, stop, chunk):
            e = min(s + chunk, stop)
            result[s:e] = xp.einsum("km,km->k", left[rows[s:e]], right[cols[s:e]])  # (k, M) . (k, M)
    split = nnz // 2 if B.name == "numpy" and nnz > 4 * chunk else nnz
    _parallel([lambda: run(0, split), lambda: run(split, nnz)] if split < nnz else [lambda: run(0, nnz)])
    if order is None:
        return result
    out = xp.empty_like(result)
    out[order] = result
    return out


def blocked_dense_take(weight, dout_t, inputs_t, max_bytes):
    """(dout_t @ inputs_t.T) at the nonzeros of `weight`, one block of rows at a time: never more
    than `max_bytes` of dense gradient. dout_t (out, M), inputs_t (in, M) -> (nnz,) in CSR order.

    The nonzeros of rows [r0, r1) are one contiguous CSR segment indptr[r0]:indptr[r1], so each
    block's take fills one slice of the result.
    """
    n_out, n_in = weight.shape
    rows_per_block = max(1, max_bytes // (n_in * dout_t.dtype.itemsize))
    indptr = weight.host_indptr()
    flat = weight.flat_positions()
    grad = B.xp.empty(weight.nnz, dtype=dout_t.dtype)
    for r0 in range(0, n_out, rows_per_block):
        r1 = min(r0 + rows_per_block, n_out)
        lo, hi = int(indptr[r0]), int(indptr[r1])
        if lo == hi:
            continue
        block = dout_t[r0:r1] @ inputs_t.T                               # (r1 - r0, in), within max_bytes
        grad[lo:hi] = block.reshape(-1)[flat[lo:hi] - r0 * n_in]
    return grad


class SparseWeight(Parameter):
    """A CSR weight as a trainable parameter. `data`/`grad` are (nnz,) vectors aligned with the CSR."""

    def __init__(self, csr):
        self.csr = csr
        self.grad = None
        self._rows = self._plan = self._flat = self._dense = self._indptr_host = None

    @property
    def data(self):
        return self.csr.data          # the CSR's own value array: updating it in place updates W

    @data.setter
    def data(self, values):
        if values is not self.csr.data:   # `p.data -= u` already wrote in place
            self.csr.data[...] = values

    @property
    def shape(self):
        return self.csr.shape

    @property
    def dtype(self):
        return self.csr.data.dtype

    @property
    def numel(self):
        """Dense size (the denominator of density and R_s)."""
        return self.csr.shape[0] * self.csr.shape[1]

    @property
    def nnz(self):
        return int(self.csr.nnz)

    def nbytes(self):
        """Bytes held for this weight: CSR arrays, gradient and the cached index arrays."""
        held = [self.csr.data, self.csr.indices, self.csr.indptr, self.grad, self._rows, self._flat]
        held += list(self._plan or ())
        return int(sum(a.nbytes for a in held if a is not None))

    @property
    def density(self):
        return self.nnz / self.numel

    def fits_dense(self):
        """Whether a dense (out, in) copy stays within DENSE_BUFFER_MAX_BYTES (see choose_paths)."""
        return self.numel * self.dtype.itemsize <= DENSE_BUFFER_MAX_BYTES

    def rows(self):
        """Row of each nonzero, (nnz,) int32 (cached until the topology changes)."""
        if self._rows is None:
            xp = B.xp
            rows = xp.searchsorted(self.csr.indptr, xp.arange(self.csr.nnz), side="right") - 1
            self._rows = rows.astype(xp.int32)
        return self._rows

    def gather_plan(self):
        """(order, rows[order], cols[order]) for `sddmm`; on a GPU (no cache to tile for) the CSR
        order itself, (None, rows, cols).

        The nonzeros are sorted by (column block, row): the rows of X gathered for one block fit in
        cache, and the rows of dY are visited in increasing order. Cached until the topology changes.
        """
        if B.name != "numpy":
            return None, self.rows(), self.csr.indices
        if self._plan is None:
            xp = B.xp
            rows, cols = self.rows(), self.csr.indices
            order = xp.lexsort((rows, cols // COLUMN_BLOCK)).astype(xp.int32)
            self._plan = (order, rows[order], cols[order])
        return self._plan

    def flat_positions(self):
        """Sorted flat positions row * n_cols + col of the nonzeros, (nnz,) int64 (cached until the
        topology changes)."""
        if self._flat is None:
            xp = B.xp
            self._flat = self.rows().astype(xp.int64) * self.csr.shape[1] + self.csr.indices.astype(xp.int64)
        return self._flat

    def host_indptr(self):
        """The CSR's row pointers on the host, (out + 1,): copied once per topology (a sync point)."""
        if self._indptr_host is None:
            self._indptr_host = B.to_host(self.csr.indptr)
        return self._indptr_host

    def scatter_dense(self):
        """The weight as a dense (out, in) array, for the dense-product path (not `toarray()`).

        One buffer per layer, zeroed once per topology (the zeros stay zeros until the next
        update); each call scatters the current values at the flat positions, since SGD has
        changed them: one small kernel of nnz writes.
        """
        if self._dense is None:
            self._dense = B.xp.zeros(self.csr.shape, dtype=self.csr.data.dtype)   # (out, in)
        self._dense.reshape(-1)[self.flat_positions()] = self.csr.data
        return self._dense

    def take(self, dense):
        """A dense (out, in) array's entries at the nonzeros, (nnz,) in CSR order."""
        return dense.reshape(-1)[self.flat_positions()]

    def set_topology(self, flat, values):
        """Replace the CSR by the one with nonzeros at sorted `flat` positions holding `values`."""
        self.csr = csr_from_flat(flat, values, self.csr.shape)
        self._rows = self._plan = self._flat = self._dense = self._indptr_host = None
        self.grad = None

    def astype(self, dtype):
        self.set_topology(self.flat_positions(), self.csr.data.astype(dtype))


def random_sparse_weight(shape, density, fan_in, fan_in_scaling=False, dtype="float32"):
    """CSR weight with exactly round(density*numel) nonzeros at uniform positions.

    Values follow PyTorch's default U(+-1/sqrt(fan_in)); with `fan_in_scaling` each row uses its
    *actual* number of inputs instead (Evci et al. 2020, "Gradient flow in sparse neural networks"),
    which keeps very sparse deep nets from starting with vanishing activations.
    """
    xp = B.xp
    numel = math.prod(shape)
    flat = sample_positions(numel, active_count(density, numel))
    values = uniform((flat.size,), 1.0, dtype)                      # U(-1, 1), scaled below
    weight = SparseWeight(csr_from_flat(flat, values, shape))
    if fan_in_scaling:
        row_fan_in = xp.diff(weight.csr.indptr).astype(dtype)        # (out,) actual inputs per row
        scale = 1.0 / xp.sqrt(xp.maximum(row_fan_in, 1))
        weight.csr.data[...] = values * scale[weight.rows()]
    else:
        weight.csr.data[...] = values * (1.0 / math.sqrt(fan_in))
    return weight


class _SparseMixin:
    """Shared by both sparse layers: the product (sparse forward, dx, gradient at the nonzeros)."""

    keep_dense_grad = False   # set by the topology engine before a RigL update step
    dense_grad = None         # (out, in) gradient of the last backward, only when keep_dense_grad and it fits
    grad_operands = None      # (dout_t, inputs_t) of that backward: RigL scores from them by blocks
    dense_weight = None       # (out, in) scattered weight of the last forward, on the dense path
    columns = None            # M of the last forward's operand: batch, or batch x output pixels

    @property
    def weight(self):
        """The CSR matrix itself."""
        return self.weight_param.csr

    def _init_parameters(self, n_out, fan_in, density, bias, fan_in_scaling):
        """CSR weight (n_out, fan_in) at `density` and a dense bias, PyTorch's default init."""
        if not 0 < density <= 1:
            raise ValueError(f"density must be in (0, 1], got {density}")
        self.weight_param = random_sparse_weight((n_out, fan_in), density, fan_in, fan_in_scaling)
        self.bias = Parameter(uniform((n_out,), 1.0 / math.sqrt(fan_in))) if bias else None

    def own_parameters(self):
        params = [("weight", self.weight_param)]
        return params + ([("bias", self.bias)] if self.bias is not None else [])

    def paths(self, columns=None):
        """(product path, gradient path) this layer takes for operands of `columns` columns (default:
        those of the last forward): see choose_paths."""
        return choose_paths(self.weight_param, self.columns if columns is None else columns)

    def _product(self, x_t):
        """W @ x_t: (out, in) @ (in, M) -> (out, M), on the path chosen for this layer's density and M."""
        self.dense_weight = None
        self.columns = x_t.shape[1]                                     # M, for paths() in backward
        if self.paths()[0] == "csr":
            return spmm(self.weight, x_t)
        self.dense_weight = self.weight_param.scatter_dense()          # kept for dx in backward
        return self.dense_weight @ x_t

    def _product_t(self, dout_t):
        """W^T @ dout_t: (in, out) @ (out, M) -> (in, M), on the path the forward took."""
        if self.dense_weight is None:
            return spmm(self.weight.T, dout_t)
        return self.dense_weight.T @ dout_t

    def _weight_grad(self, dout_t, inputs_t):
        """dout_t (out, M), inputs_t (in, M), both feature-major -> gradient at the nonzeros."""
        w = self.weight_param
        self.dense_grad = self.grad_operands = None
        path = self.paths()[1]
        if self.keep_dense_grad:    # RigL grows where this minibatch's |gradient| is largest: it scores
            self.grad_operands = (dout_t, inputs_t)      # from these by blocks, never the whole (out, in)
            if w.fits_dense():                           # small: the dense gradient too,
                self.dense_grad = dout_t @ inputs_t.T    # for readers and growth; (out, in)
                return w.take(self.dense_grad)
        if path == "gather":
            order, rows, cols = w.gather_plan()
            return sddmm(dout_t, inputs_t, rows, cols, order)
        if path == "blocked dense+take":
            return blocked_dense_take(w, dout_t, inputs_t, DENSE_BUFFER_MAX_BYTES)
        dense = dout_t @ inputs_t.T                                      # (out, M) @ (M, in) -> (out, in)
        return w.take(dense)                                             # (nnz,) at the nonzeros


class SparseLinear(_SparseMixin, Module):
    """y = x W^T + b with W a CSR matrix (out_features, in_features). x (N, in) -> (N, out)."""

    def __init__(self, in_features, out_features, density, bias=True, fan_in_scaling=False):
        self.in_features, self.out_features = in_features, out_features
        self._init_parameters(out_features, in_features, density, bias, fan_in_scaling)
        self.x_t = None

    def forward(self, x):
        check_input(self, x, 2, self.in_features)
        self.x_t = B.xp.ascontiguousarray(x.T)          # (in, N) feature-major: contiguous row gathers
        y_t = self._product(self.x_t)                     # (out, in) @ (in, N) -> (out, N)
        if self.bias is not None:
            y_t += self.bias.data[:, None]
        return y_t.T                                      # (N, out), a view

    def backward(self, dout):
        dout_t = B.xp.ascontiguousarray(dout.T)           # (out, N)
        if self.bias is not None:
            self.bias.grad = dout_t.sum(axis=1)           # (out,)
        self.weight_param.grad = self._weight_grad(dout_t, self.x_t)   # (nnz,)
        if not self.input_grad:
            return None
        return self._product_t(dout_t).T                  # (in, out) @ (out, N) -> (in, N) -> (N, in)


class SparseConv2d(_SparseMixin, Conv2d):
    """Conv2d whose weight is a CSR matrix (out, in*kh*kw) applied to the im2col columns."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, density=1.0,
                 fan_in_scaling=False):
        fan_in = self._set_geometry(in_channels, out_channels, kernel_size, stride, padding)
        self._init_parameters(out_channels, fan_in, density, bias, fan_in_scaling)

    def _matmul(self, cols):
        return self._product(cols)                                           # (O, CKK) @ (CKK, M)

    def _backward_matmul(self, dout2):
        dout2 = B.xp.ascontiguousarray(dout2)                                # (O, M)
        self.weight_param.grad = self._weight_grad(dout2, self.cols)         # (nnz,)
        if not self.input_grad:
            return None
        return self._product_t(dout2)                                        # (CKK, O) @ (O, M)


SPARSE_TYPES = (SparseLinear, SparseConv2d)
