"""Truly sparse layers: SparseLinear and SparseConv2d keep their weight as a CSR matrix.

SET (Mocanu et al. 2018) and ITOP (Liu et al. 2021) train such layers from scratch. Here the weight
*is* a `scipy.sparse` / `cupyx.scipy.sparse` CSR matrix (out, in) or (out, in*kh*kw): no dense weight
and no dense mask exist. Forward is CSR @ dense, dx is CSR^T @ dense, and the weight gradient is
computed only at the nonzeros (a sampled dense-dense product, SDDMM).
"""
import math
import os
from concurrent.futures import ThreadPoolExecutor

from tinyitop import backend as B
from tinyitop.init import active_count, sample_positions
from tinyitop.layers import Conv2d, Module, Parameter, check_input, uniform

# Below this density the gradient is gathered at the nonzeros; above it, the dense product
# dY^T X followed by a take is faster (crossover measured at ~2% on a 2-core Xeon (PERF-NOTES) and
# ~3% on a 2-core EPYC with slower BLAS: benchmarks/bench_sparse.py prints the path of each layer).
GATHER_MAX_DENSITY = 0.03
# The gather runs in chunks: ~1k nonzeros keep both gathered operands in cache on a CPU (3x faster
# than 16k); a GPU wants a few large kernels instead of many small ones.
CPU_CHUNK, GPU_CHUNK = 1024, 1 << 18   # GPU: 256k nonzeros x 128 samples = 128 MiB per operand
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
    chunk = CPU_CHUNK if B.name == "numpy" else GPU_CHUNK

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


class SparseWeight(Parameter):
    """A CSR weight as a trainable parameter. `data`/`grad` are (nnz,) vectors aligned with the CSR."""

    def __init__(self, csr):
        self.csr = csr
        self.grad = None
        self._rows = self._plan = None

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
        held = [self.csr.data, self.csr.indices, self.csr.indptr, self.grad, self._rows]
        held += list(self._plan or ())
        return int(sum(a.nbytes for a in held if a is not None))

    @property
    def density(self):
        return self.nnz / self.numel

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
        """Sorted flat positions row * n_cols + col of the nonzeros, (nnz,) int64."""
        xp = B.xp
        return self.rows().astype(xp.int64) * self.csr.shape[1] + self.csr.indices.astype(xp.int64)

    def set_topology(self, flat, values):
        """Replace the CSR by the one with nonzeros at sorted `flat` positions holding `values`."""
        self.csr = csr_from_flat(flat, values, self.csr.shape)
        self._rows = self._plan = None
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
    dense_grad = None         # (out, in) gradient of the last backward, only when keep_dense_grad

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

    def _weight_grad(self, dout_t, inputs_t):
        """dout_t (out, M), inputs_t (in, M), both feature-major -> gradient at the nonzeros."""
        w = self.weight_param
        self.dense_grad = None
        if w.density < GATHER_MAX_DENSITY and not self.keep_dense_grad:
            order, rows, cols = w.gather_plan()
            return sddmm(dout_t, inputs_t, rows, cols, order)
        dense = dout_t @ inputs_t.T                                      # (out, M) @ (M, in) -> (out, in)
        if self.keep_dense_grad:        # RigL grows where this minibatch's dense gradient is largest
            self.dense_grad = dense
        return dense[w.rows(), w.csr.indices]                            # take at the nonzeros


class SparseLinear(_SparseMixin, Module):
    """y = x W^T + b with W a CSR matrix (out_features, in_features). x (N, in) -> (N, out)."""

    def __init__(self, in_features, out_features, density, bias=True, fan_in_scaling=False):
        self.in_features, self.out_features = in_features, out_features
        self._init_parameters(out_features, in_features, density, bias, fan_in_scaling)
        self.x_t = None

    def forward(self, x):
        check_input(self, x, 2, self.in_features)
        self.x_t = B.xp.ascontiguousarray(x.T)          # (in, N) feature-major: contiguous row gathers
        y_t = spmm(self.weight, self.x_t)                 # (out, in) @ (in, N) -> (out, N)
        if self.bias is not None:
            y_t += self.bias.data[:, None]
        return y_t.T                                      # (N, out), a view

    def backward(self, dout):
        dout_t = B.xp.ascontiguousarray(dout.T)           # (out, N)
        if self.bias is not None:
            self.bias.grad = dout_t.sum(axis=1)           # (out,)
        self.weight_param.grad = self._weight_grad(dout_t, self.x_t)   # (nnz,)
        return spmm(self.weight.T, dout_t).T              # (in, out) @ (out, N) -> (in, N) -> (N, in)


class SparseConv2d(_SparseMixin, Conv2d):
    """Conv2d whose weight is a CSR matrix (out, in*kh*kw) applied to the im2col columns."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, density=1.0,
                 fan_in_scaling=False):
        fan_in = self._set_geometry(in_channels, out_channels, kernel_size, stride, padding)
        self._init_parameters(out_channels, fan_in, density, bias, fan_in_scaling)

    def _matmul(self, cols):
        return spmm(self.weight, cols)                                       # (O, CKK) @ (CKK, M)

    def _backward_matmul(self, dout2):
        dout2 = B.xp.ascontiguousarray(dout2)                                # (O, M)
        self.weight_param.grad = self._weight_grad(dout2, self.cols)         # (nnz,)
        return spmm(self.weight.T, dout2)                                    # (CKK, O) @ (O, M)


SPARSE_TYPES = (SparseLinear, SparseConv2d)
