"""Faster kernels for the three products of a sparse layer, and which one to use.

tinyitop/sparse.py writes each product as its plain expression: W @ X and W^T @ dY on the CSR, and
the weight gradient at the nonzeros as one dot product per nonzero. This module is the aside: when
`faster(weight, product, columns)` says so, the layer calls the kernel here instead, which computes
the same values (bit for bit on the CSR and gather paths, to float rounding on the dense ones; tests
check each path against the plain expression). Truly sparse kernels win only below a density that
depends on the device, so each product has two paths:
  product  "csr":   the CSR kernel (scipy.sparse / cuSPARSE);
           "dense": the CSR's values scattered into a reused dense (out, in) buffer, then BLAS/cuBLAS;
  gradient "gather":     dY[row] . X[col] at each nonzero only (a sampled product, SDDMM: `sddmm`);
           "dense+take": the dense gradient dY X^T, then its entries at the nonzeros;
           "blocked dense+take": the same one block of rows at a time, for layers too big for a
           dense buffer.
The rule (measured by benchmarks/bench_breakeven.py and bench_paths.py; figures in docs/SPEED.md):
  CPU: CSR products below 5% density while their dense operand fits the last-level cache (24 MiB
       here), below 3% beyond; the gather below 3%.
  GPU: everything below 0.2% (cuBLAS is that much faster); at ERK's conv densities all is dense.
The thresholds are constants, not calibrated at run time, so a run always takes the same paths and
a resumed run stays bit-identical. On a CPU the kernels split their work over two threads (SciPy's
and NumPy's kernels release the GIL).
"""
from tinyitop import backend as B
from tinyitop.layers import weight_gradient
from tinyitop.threads import parallel, pool

PRODUCT_CSR_MAX_DENSITY = {"numpy": {"in cache": 0.05, "beyond cache": 0.03},
                           "cupy": {"in cache": 0.002, "beyond cache": 0.002}}
GATHER_MAX_DENSITY = {"numpy": 0.03, "cupy": 0.002}
OPERAND_CACHE_BYTES = 24 * 2 ** 20      # a CSR product's dense operand is "in cache" up to this size
# A layer whose dense (out, in) copy would exceed this keeps its products on CSR at any density
# (a 10000x10000 layer would need 400 MB per buffer, what truly sparse training exists to avoid);
# its gradient takes the dense path one block of rows at a time within this budget. It holds every
# conv layer of ResNet/VGG (the largest, 512x4608, is 9 MB) and the paper MLP's fc1 (12.6 MB).
DENSE_BUFFER_MAX_BYTES = 64 * 2 ** 20
# The gather works in chunks of nonzeros sized by bytes (each nonzero reads one row of M values of
# each operand): small enough to stay in a CPU's cache, large enough to be a few big GPU kernels.
CPU_CHUNK_BYTES, GPU_CHUNK_BYTES = 512 * 2 ** 10, 128 * 2 ** 20
COLUMN_BLOCK = 512      # CPU gather: nonzeros visited by blocks of 512 input features (stay in L2)
# CPU transposes (feature_major): where a row of x spans a multiple of 2 KiB (F = 512, 1024, 3072
# floats...), the elements of one column of x fall into few cache sets and evict each other, and
# NumPy's x.T copy runs several times slower than at other widths; copying 8 rows at a time then
# wins (elsewhere it loses). Measured by benchmarks/bench_transpose.py (figures in docs/SPEED.md).
TRANSPOSE_TILE_ROWS, TRANSPOSE_ALIASED_STRIDE = 8, 2048


def cache_state(shape, columns, itemsize):
    """"in cache" or "beyond cache": whether a CSR product's dense operand, X (in, M) for W @ X or
    dY (out, M) for W^T @ dY, the larger of the two, fits OPERAND_CACHE_BYTES."""
    return "in cache" if max(shape) * columns * itemsize <= OPERAND_CACHE_BYTES else "beyond cache"


def fits_dense(weight):
    """Whether a dense (out, in) copy of a SparseWeight stays within DENSE_BUFFER_MAX_BYTES."""
    return weight.numel * weight.dtype.itemsize <= DENSE_BUFFER_MAX_BYTES


def choose_paths(weight, columns):
    """(product path, gradient path) of a SparseWeight multiplying operands of `columns` columns
    (M) on the active backend: "csr" or "dense", and "gather", "dense+take" or "blocked dense+take"."""
    fits = fits_dense(weight)
    cache = cache_state(weight.shape, columns, weight.dtype.itemsize)
    product = "csr" if weight.density < PRODUCT_CSR_MAX_DENSITY[B.name][cache] or not fits else "dense"
    if weight.density < GATHER_MAX_DENSITY[B.name]:
        return product, "gather"
    return product, "dense+take" if fits else "blocked dense+take"


def faster(weight, product, columns):
    """Whether a kernel here beats sparse.py's plain expression of `product` ("forward", "input grad"
    or "weight grad") for operands of `columns` columns (M). The plain expression is left to the
    cases where it is that kernel already: a CSR product too small to split over threads, a gather
    whose (nnz, M) operands fit one chunk."""
    product_path, grad_path = choose_paths(weight, columns)
    if product == "weight grad":
        return grad_path != "gather" or weight.nnz * columns * weight.dtype.itemsize > _chunk_bytes()
    return product_path == "dense" or _splits(weight.nnz, columns)


def forward(weight, x_t):
    """W @ x_t (in, M) -> (out, M) by the faster path: BLAS on a dense copy, or CSR on two threads."""
    if choose_paths(weight, x_t.shape[1])[0] == "dense":
        return scatter_dense(weight) @ x_t
    return spmm(weight.csr, x_t)


def input_grad(weight, dout_t, out=None):
    """W^T @ dout_t (out, M) -> (in, M) on the path the forward took (the dense path reads the copy
    that forward scattered, and writes into `out` if given)."""
    if choose_paths(weight, dout_t.shape[1])[0] == "dense":
        return B.xp.matmul(weight.kernel_cache["dense"].T, dout_t, out=out)
    return spmm(weight.csr.T, dout_t)


def grad_at_nonzeros(weight, dout_t, inputs_t):
    """(dout_t @ inputs_t.T) at the nonzeros of `weight` by the faster path: dout_t (out, M),
    inputs_t (in, M) -> (nnz,) in CSR order."""
    path = choose_paths(weight, dout_t.shape[1])[1]
    if path == "gather":
        order, rows, cols = gather_plan(weight)
        return sddmm(dout_t, inputs_t, rows, cols, order)
    if path == "blocked dense+take":
        return blocked_dense_take(weight, dout_t, inputs_t, DENSE_BUFFER_MAX_BYTES)
    return take(weight, weight_gradient(dout_t, inputs_t))          # (out, M) @ (M, in) -> (out, in)


def _chunk_bytes():
    return CPU_CHUNK_BYTES if B.name == "numpy" else GPU_CHUNK_BYTES


def _splits(nnz, columns):
    """Whether spmm splits a CSR product over two threads (NumPy only: pool() is None on CuPy)."""
    return columns >= 64 and nnz >= 40_000 and pool() is not None


# ---- per-topology caches of the kernels: index plans and the dense buffer --------------------------
# They live in weight.kernel_cache, which SparseWeight empties when its topology changes.
def _cached(weight, key, build):
    if key not in weight.kernel_cache:
        weight.kernel_cache[key] = build()
    return weight.kernel_cache[key]


def scatter_dense(weight):
    """The weight as a dense (out, in) array for the dense-product path: one buffer per layer, zeroed
    once per topology; each call writes the current values at the nonzeros."""
    dense = _cached(weight, "dense", lambda: B.xp.zeros(weight.shape, dtype=weight.dtype))   # (out, in)
    dense.reshape(-1)[weight.flat_positions()] = weight.csr.data
    return dense


def dense_copy(weight):
    """The dense buffer the last dense-path forward scattered, or None."""
    return weight.kernel_cache.get("dense")


def take(weight, dense):
    """A dense (out, in) array's entries at the nonzeros, (nnz,) in CSR order.

    `dense` may be the transposed view of an (in, out) array (layers.weight_gradient turns its
    product when in > out): its own memory is then read at the transposed positions, never copied
    whole (`reshape(-1)` of such a view would copy all out x in entries).
    """
    if dense.flags.c_contiguous:
        return dense.reshape(-1)[weight.flat_positions()]
    if not dense.T.flags.c_contiguous:
        raise ValueError("take needs a C-contiguous (out, in) array or the transpose of one")
    order, positions_t = transposed_plan(weight)
    values = B.xp.empty(weight.nnz, dtype=dense.dtype)
    values[order] = dense.T.reshape(-1)[positions_t]      # (in, out) memory read in its own order
    return values


def transposed_plan(weight):
    """(order, col * out + row sorted): where the nonzeros lie in the (in, out) transpose, sorted so
    that a take from it reads memory forwards; nonzero order[j] sits at sorted position j."""
    def build():
        xp = B.xp
        positions_t = weight.csr.indices.astype(xp.int64) * weight.shape[0] + weight.rows()
        order = xp.argsort(positions_t, kind="stable")
        index = xp.int32 if weight.numel < 2 ** 31 else xp.int64     # 8 bytes a nonzero, not 16
        return order.astype(index), positions_t[order].astype(index)
    return _cached(weight, "transposed", build)


def gather_plan(weight):
    """(order, rows[order], cols[order]) for `sddmm`; on a CPU the nonzeros sorted by (column block,
    row) so that the gathered rows stay in cache; on a GPU the CSR order, (None, rows, cols)."""
    if B.name != "numpy":
        return None, weight.rows(), weight.csr.indices

    def build():
        xp = B.xp
        rows, cols = weight.rows(), weight.csr.indices
        order = xp.lexsort((rows, cols // COLUMN_BLOCK)).astype(xp.int32)
        return order, rows[order], cols[order]
    return _cached(weight, "gather", build)


def host_indptr(weight):
    """The CSR's row pointers on the host, (out + 1,): copied once per topology (a sync point)."""
    return _cached(weight, "indptr on host", lambda: B.to_host(weight.csr.indptr))


def index_bytes(weight):
    """Bytes of the index plans cached for this weight (the dense buffer is a reused work array,
    counted with the dense path's operands, not with what the weight holds)."""
    plans = [weight.kernel_cache.get("gather", ()), weight.kernel_cache.get("transposed", ())]
    return int(sum(a.nbytes for plan in plans for a in plan if a is not None))


# ---- the kernels ---------------------------------------------------------------------------------
def feature_major(x):
    """x (N, F) -> x.T as a C-contiguous (F, N) array, the layout every kernel here reads (a view
    when x.T already is one, e.g. the previous sparse layer's output).

    Plain: `xp.ascontiguousarray(x.T)`. CPU aside for a C-contiguous x whose rows span a multiple of
    TRANSPOSE_ALIASED_STRIDE bytes: copy TRANSPOSE_TILE_ROWS rows of x at a time, so that each source
    cache line is read once for 8 values instead of once per value (the same values;
    benchmarks/bench_transpose.py times both and checks they are equal).
    """
    xp = B.xp
    row_bytes = x.shape[-1] * x.dtype.itemsize
    if B.name != "numpy" or not x.flags.c_contiguous or row_bytes % TRANSPOSE_ALIASED_STRIDE:
        return xp.ascontiguousarray(x.T)
    out = xp.empty(x.shape[::-1], dtype=x.dtype)                        # (F, N)
    for i in range(0, x.shape[0], TRANSPOSE_TILE_ROWS):
        out[:, i:i + TRANSPOSE_TILE_ROWS] = x[i:i + TRANSPOSE_TILE_ROWS].T  # (F, 8) <- (8, F).T
    return out


def spmm(matrix, dense):
    """CSR (or its transpose) @ dense (K, M) -> (rows, M). On NumPy, columns split over two threads."""
    xp = B.xp
    m = dense.shape[1]
    if not _splits(matrix.nnz, m):
        return xp.asarray(matrix @ dense)
    half = m // 2
    parts = parallel([lambda: matrix @ xp.ascontiguousarray(dense[:, :half]),
                      lambda: matrix @ xp.ascontiguousarray(dense[:, half:])])
    return xp.concatenate(parts, axis=1)


def sddmm(left, right, rows, cols, order=None):
    """(left @ right.T)[rows, cols] without the dense product: left (R, M), right (C, M) -> (nnz,).

    Each nonzero is the dot product of one row of `left` with one row of `right`: both operands are
    feature-major, so every gathered row is contiguous. If `order` is given, rows/cols are already
    permuted by it (gather_plan) and the result is scattered back to CSR order.
    """
    xp = B.xp
    nnz = rows.size
    result = xp.empty(nnz, dtype=left.dtype)
    row_bytes = left.shape[1] * left.dtype.itemsize                     # one gathered row: M values
    chunk = max(16, _chunk_bytes() // row_bytes)

    def run(start, stop):
        for s in range(start, stop, chunk):
            e = min(s + chunk, stop)
            result[s:e] = xp.einsum("km,km->k", left[rows[s:e]], right[cols[s:e]])  # (k, M) . (k, M)
    split = nnz // 2 if B.name == "numpy" and nnz > 4 * chunk else nnz
    parallel([lambda: run(0, split), lambda: run(split, nnz)] if split < nnz else [lambda: run(0, nnz)])
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
    indptr = host_indptr(weight)
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
