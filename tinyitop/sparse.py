"""Truly sparse layers: SparseLinear and SparseConv2d keep their weight as a CSR matrix.

SET (Mocanu et al. 2018) and ITOP (Liu et al. 2021) train such layers from scratch. The weight *is*
a `scipy.sparse` / `cupyx.scipy.sparse` CSR matrix (out, in), or (out, in*kh*kw) for a conv: no
dense weight and no dense mask exist. A layer does three products per step:
    forward      Y  = W @ X          (out, in) @ (in, M) -> (out, M)
    input grad   dX = W^T @ dY       (in, out) @ (out, M) -> (in, M)
    weight grad  dW[r, c] = dY[r] . X[c] at the nonzeros (r, c) only -> (nnz,)
where M is the batch (linear) or batch x output pixels (conv, on im2col's columns). The weight, its
gradient and its optimizer state are all sized by the number of nonzeros. Each product below is its
plain expression; where a faster kernel exists for the layer's density and size (CSR split over two
threads, BLAS on a scattered dense copy, the gather in cache-sized chunks), a one-line aside calls it
from tinyitop/sparse_kernels.py instead: the same values, to float rounding.
"""
import math

from tinyitop import backend as B
from tinyitop import sparse_kernels as kernels
from tinyitop.init import active_count, random_positions
from tinyitop.layers import Conv2d, Module, Parameter, check_input, uniform, weight_gradient


class SparseWeight(Parameter):
    """A CSR weight as a trainable parameter: `data` and `grad` are (nnz,) vectors aligned with the
    CSR's nonzeros (`data` is the CSR's own value array: updating it in place updates W)."""

    def __init__(self, csr):
        self.csr = csr
        self.grad = None
        self._rows = self._flat = None
        self.kernel_cache = {}      # the faster kernels' index plans and buffer (sparse_kernels.py)

    @property
    def data(self):
        return self.csr.data

    @data.setter
    def data(self, values):
        if values is not self.csr.data:   # `p.data -= u` already wrote in place
            self.csr.data[...] = values

    shape = property(lambda self: self.csr.shape)
    dtype = property(lambda self: self.csr.data.dtype)
    numel = property(lambda self: self.csr.shape[0] * self.csr.shape[1], doc="dense size: R_s's denominator")
    nnz = property(lambda self: int(self.csr.nnz))
    density = property(lambda self: self.nnz / self.numel)

    def flat_positions(self):
        """Sorted flat positions row * n_cols + col of the nonzeros, (nnz,) int64 (cached until the
        topology changes): the mask, as the topology update and the explored sets see it."""
        if self._flat is None:
            xp = B.xp
            self._flat = self.rows().astype(xp.int64) * self.csr.shape[1] + self.csr.indices.astype(xp.int64)
        return self._flat

    def rows(self):
        """Row of each nonzero, (nnz,) int32 (cached until the topology changes)."""
        if self._rows is None:
            xp = B.xp
            rows = xp.searchsorted(self.csr.indptr, xp.arange(self.csr.nnz), side="right") - 1
            self._rows = rows.astype(xp.int32)
        return self._rows

    def set_topology(self, flat, values):
        """Replace the CSR by the one with nonzeros at sorted `flat` positions holding `values`."""
        self.csr = csr_from_flat(flat, values, self.csr.shape)
        self._rows = self._flat = self.grad = None
        self.kernel_cache = {}

    def astype(self, dtype):
        self.set_topology(self.flat_positions(), self.csr.data.astype(dtype))

    def nbytes(self):
        """Bytes held for this weight: CSR arrays, gradient and the cached index arrays."""
        held = [self.csr.data, self.csr.indices, self.csr.indptr, self.grad, self._rows, self._flat]
        return int(sum(a.nbytes for a in held if a is not None)) + kernels.index_bytes(self)


class _SparseMixin:
    """Shared by both sparse layers: the three products of a CSR weight."""

    keep_dense_grad = False   # set by the topology updater before a RigL update step
    dense_grad = None         # (out, in) gradient of that backward, when it fits the dense budget
    grad_operands = None      # (dout_t, inputs_t) of that backward: RigL scores growth from them
    columns = None            # M of the last forward's operand: batch, or batch x output pixels

    def _init_parameters(self, n_out, fan_in, density, bias, fan_in_scaling):
        """CSR weight (n_out, fan_in) at `density` and a dense bias, PyTorch's default init."""
        if not 0 < density <= 1:
            raise ValueError(f"density must be in (0, 1], got {density}")
        self.weight = random_sparse_weight((n_out, fan_in), density, fan_in, fan_in_scaling)   # .csr: the matrix
        self.bias = Parameter(uniform((n_out,), 1.0 / math.sqrt(fan_in))) if bias else None

    def own_parameters(self):
        params = [("weight", self.weight)]
        return params + ([("bias", self.bias)] if self.bias is not None else [])

    def paths(self, columns=None):
        """(product path, gradient path) for operands of `columns` columns (default: the last forward's)."""
        return kernels.choose_paths(self.weight, self.columns if columns is None else columns)

    def _product(self, x_t):
        """Y = W @ X: (out, in) @ (in, M) -> (out, M)."""
        self.columns = x_t.shape[1]
        if kernels.faster(self.weight, "forward", self.columns):   # aside: the same product, faster
            return kernels.forward(self.weight, x_t)
        return self.weight.csr @ x_t                               # CSR @ dense

    def _product_t(self, dout_t, out=None):
        """dX = W^T @ dY: (in, out) @ (out, M) -> (in, M) (a faster kernel may write into `out`)."""
        if kernels.faster(self.weight, "input grad", self.columns):   # aside: the same product, faster
            return kernels.input_grad(self.weight, dout_t, out)
        return self.weight.csr.T @ dout_t                             # CSR^T @ dense

    def _weight_grad(self, dout_t, inputs_t):
        """dW at the nonzeros only: dW[r, c] = dY[r] . X[c] for each nonzero (r, c), from dout_t
        (out, M) and inputs_t (in, M) -> (nnz,) in CSR order. Never the dense (out, in) gradient."""
        self.dense_grad = self.grad_operands = None
        if self.keep_dense_grad:
            return self._keep_for_rigl(dout_t, inputs_t)
        if kernels.faster(self.weight, "weight grad", self.columns):   # aside: the same values, faster
            return kernels.grad_at_nonzeros(self.weight, dout_t, inputs_t)
        rows, cols = self.weight.rows(), self.weight.csr.indices        # (nnz,) each
        return B.xp.einsum("km,km->k", dout_t[rows], inputs_t[cols])    # (nnz, M) . (nnz, M) -> (nnz,)

    def _keep_for_rigl(self, dout_t, inputs_t):
        """A RigL update step: growth needs |dL/dW| at *every* position, so keep the operands (RigL
        scores them by blocks, never the whole (out, in)) and, when it fits, the dense gradient."""
        self.grad_operands = (dout_t, inputs_t)
        if not kernels.fits_dense(self.weight):
            return kernels.grad_at_nonzeros(self.weight, dout_t, inputs_t)
        self.dense_grad = weight_gradient(dout_t, inputs_t)             # (out, in)
        return kernels.take(self.weight, self.dense_grad)


class SparseLinear(_SparseMixin, Module):
    """y = x W^T + b with W a CSR matrix (out_features, in_features). x (N, in) -> (N, out)."""

    def __init__(self, in_features, out_features, density, bias=True, fan_in_scaling=False):
        self.in_features, self.out_features = in_features, out_features
        self._init_parameters(out_features, in_features, density, bias, fan_in_scaling)
        self.x_t = None

    def forward(self, x):
        check_input(self, x, 2, self.in_features)
        self.x_t = kernels.feature_major(x)               # (in, N) feature-major: contiguous row gathers
        y_t = self._product(self.x_t)                     # (out, in) @ (in, N) -> (out, N)
        if self.bias is not None:
            y_t += self.bias.data[:, None]
        return y_t.T                                      # (N, out), a view

    def backward(self, dout):
        dout_t = kernels.feature_major(dout)                # (out, N)
        if self.bias is not None:
            self.bias.grad = dout_t.sum(axis=1)           # (out,)
        self.weight.grad = self._weight_grad(dout_t, self.x_t)   # (nnz,)
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
        self.weight.grad = self._weight_grad(dout2, self.cols)         # (nnz,)
        if not self.input_grad:
            return None
        spent = self._spent_columns() if self.grad_operands is None else None   # RigL still needs them
        return self._product_t(dout2, out=spent)                             # (CKK, O) @ (O, M)


SPARSE_TYPES = (SparseLinear, SparseConv2d)


def csr_from_flat(flat, values, shape):
    """Sorted flat positions (row * n_cols + col) and their values -> CSR matrix of `shape`."""
    xp = B.xp
    n_rows, n_cols = shape
    rows = flat // n_cols
    cols = (flat - rows * n_cols).astype(xp.int32)
    indptr = xp.searchsorted(rows, xp.arange(n_rows + 1)).astype(xp.int32)  # first nnz of each row
    return B.sparse.csr_matrix((values, cols, indptr), shape=shape)


def random_sparse_weight(shape, density, fan_in, fan_in_scaling=False, dtype="float32"):
    """CSR weight with exactly round(density*numel) nonzeros at uniform positions.

    Values follow PyTorch's default U(+-1/sqrt(fan_in)); with `fan_in_scaling` each row uses its
    *actual* number of inputs instead (Evci et al. 2020, "Gradient flow in sparse neural networks"),
    which keeps very sparse deep nets from starting with vanishing activations.
    """
    xp = B.xp
    numel = math.prod(shape)
    flat = random_positions(numel, active_count(density, numel))
    values = uniform((flat.size,), 1.0, dtype)                      # U(-1, 1), scaled below
    weight = SparseWeight(csr_from_flat(flat, values, shape))
    if fan_in_scaling:
        row_fan_in = xp.diff(weight.csr.indptr).astype(dtype)        # (out,) actual inputs per row
        scale = 1.0 / xp.sqrt(xp.maximum(row_fan_in, 1))
        weight.csr.data[...] = values * scale[weight.rows()]
    else:
        weight.csr.data[...] = values * (1.0 / math.sqrt(fan_in))
    return weight
