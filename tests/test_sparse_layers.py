"""SparseLinear / SparseConv2d equal their dense twins with a masked weight (float64), on both backends."""
import numpy as np
import pytest

from gradcheck import check_layer
from tinyitop import backend as B
from tinyitop.init import active_count, random_positions
from tinyitop.layers import Conv2d, Parameter
from tinyitop.sparse import SparseConv2d, SparseLinear, SparseWeight, csr_from_flat
from tinyitop import sparse_kernels as kernels
from tinyitop.sparse_kernels import sddmm


def _mask(kind, shape, rng):
    """Host boolean masks, including the awkward ones."""
    rows, cols = shape
    if kind == "random":
        return rng.random(shape) < 0.3
    if kind == "empty_rows_and_cols":
        mask = rng.random(shape) < 0.5
        mask[::2] = False
        mask[:, 1::3] = False
        return mask
    if kind == "dense":
        return np.ones(shape, dtype=bool)
    mask = np.zeros(shape, dtype=bool)      # a single nonzero
    mask[rows // 2, cols - 1] = True
    return mask


def _set_weight(layer, dense_w):
    """Make the sparse layer hold exactly the nonzeros of host matrix dense_w."""
    flat = np.flatnonzero(dense_w)
    layer.weight = SparseWeight(csr_from_flat(B.to_device(flat), B.to_device(dense_w.reshape(-1)[flat]),
                                                    dense_w.shape))


MASKS = ["random", "empty_rows_and_cols", "dense", "single"]


PATHS = [("csr", "gather"), ("csr", "dense+take"), ("dense", "gather"), ("dense", "dense+take"),
         ("csr", "blocked dense+take")]


def force_paths(monkeypatch, paths):
    """Make every sparse layer take the given (product, gradient) paths, whatever its density."""
    monkeypatch.setattr("tinyitop.sparse_kernels.choose_paths", lambda weight, columns: paths)


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("paths", PATHS)
def test_sparse_linear_equals_masked_dense(any_backend, host_rng, mask_kind, paths, monkeypatch):
    force_paths(monkeypatch, paths)
    mask = _mask(mask_kind, (6, 9), host_rng)
    w = host_rng.standard_normal((6, 9)) * mask
    b = host_rng.standard_normal(6)
    sparse = SparseLinear(9, 6, 0.5).astype("float64")
    _set_weight(sparse, w)
    sparse.bias = Parameter(B.to_device(b))
    x = host_rng.standard_normal((5, 9))
    dout = host_rng.standard_normal((5, 6))

    y = B.to_host(sparse.forward(B.to_device(x)))
    dx = B.to_host(sparse.backward(B.to_device(dout)))
    np.testing.assert_allclose(y, x @ w.T + b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dout @ w, rtol=1e-12, atol=1e-12)
    grad_dense = dout.T @ x
    rows, cols = np.nonzero(mask)
    np.testing.assert_allclose(B.to_host(sparse.weight.grad), grad_dense[rows, cols], rtol=1e-10, atol=1e-12)
    assert y.dtype == np.float64


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("paths", PATHS)
def test_sparse_conv_equals_masked_dense(any_backend, host_rng, mask_kind, paths, monkeypatch):
    force_paths(monkeypatch, paths)
    dense = Conv2d(3, 4, 3, stride=2, padding=1).astype("float64")
    mask = _mask(mask_kind, (4, 27), host_rng)
    w = B.to_host(dense.weight.data).reshape(4, 27) * mask
    dense.weight.data = B.to_device(w.reshape(4, 3, 3, 3))
    sparse = SparseConv2d(3, 4, 3, stride=2, padding=1, density=0.5).astype("float64")
    _set_weight(sparse, w)
    sparse.bias = Parameter(dense.bias.data.copy())
    x = B.to_device(host_rng.standard_normal((2, 3, 7, 7)))
    dout = B.to_device(host_rng.standard_normal(dense.output_shape(x.shape)))
    np.testing.assert_allclose(B.to_host(sparse.forward(x)), B.to_host(dense.forward(x)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(B.to_host(sparse.backward(dout)), B.to_host(dense.backward(dout)), atol=1e-12)
    rows, cols = np.nonzero(mask)
    np.testing.assert_allclose(B.to_host(sparse.weight.grad),
                               B.to_host(dense.weight.grad).reshape(4, 27)[rows, cols], atol=1e-12)
    np.testing.assert_allclose(B.to_host(sparse.bias.grad), B.to_host(dense.bias.grad), atol=1e-12)


@pytest.mark.parametrize("paths", PATHS)
def test_sparse_linear_gradient_check(host_rng, paths, monkeypatch):
    force_paths(monkeypatch, paths)
    layer = SparseLinear(60, 8, 0.2).astype("float64")
    check_layer(layer, host_rng.standard_normal((3, 60)), host_rng)


@pytest.mark.parametrize("paths", PATHS)
def test_sparse_conv_gradient_check(host_rng, paths, monkeypatch):
    force_paths(monkeypatch, paths)
    layer = SparseConv2d(2, 3, 3, padding=1, density=0.4).astype("float64")
    check_layer(layer, host_rng.standard_normal((2, 2, 4, 4)), host_rng)


def test_paths_follow_the_measured_thresholds_and_the_memory_cap(monkeypatch):
    low, high = SparseLinear(3072, 1024, 0.01), SparseLinear(3072, 1024, 0.2)
    assert low.paths(128) == ("csr", "gather") and high.paths(128) == ("dense", "dense+take")
    conv = SparseConv2d(256, 512, 3, density=0.04)          # 512x2304 at 4%: CSR only while X fits the cache
    assert conv.paths(2048) == ("csr", "dense+take")        # X (2304, 2048) float32: 18 MiB
    assert conv.paths(3200) == ("dense", "dense+take")      # 28 MiB, over OPERAND_CACHE_BYTES
    conv.forward(B.to_device(np.zeros((2, 256, 4, 4)), dtype="float32"))
    assert conv.columns == 2 * 2 * 2 and conv.paths() == conv.paths(8)   # default: the last forward's M (N x OH x OW)
    monkeypatch.setattr("tinyitop.sparse_kernels.DENSE_BUFFER_MAX_BYTES", 3072 * 1024 * 4 - 1)
    assert high.paths(128) == ("csr", "blocked dense+take")  # too large to hold dense: CSR products
    monkeypatch.undo()
    B.use_modules("cupy", B.xp, B.sparse)                   # the GPU's thresholds: dense from 0.2%
    assert low.paths(128) == ("dense", "dense+take") and SparseLinear(3072, 100, 0.001).paths(128) == ("csr", "gather")


@pytest.mark.parametrize("rows_per_block", [1, 3, 40])
def test_blocked_dense_take_equals_the_gather(any_backend, host_rng, rows_per_block):
    from tinyitop.sparse_kernels import blocked_dense_take
    mask = _mask("empty_rows_and_cols", (37, 23), host_rng)
    layer = SparseLinear(23, 37, 0.5).astype("float64")
    _set_weight(layer, host_rng.standard_normal((37, 23)) * mask)
    w = layer.weight
    dout_t, x_t = B.to_device(host_rng.standard_normal((37, 6))), B.to_device(host_rng.standard_normal((23, 6)))
    got = blocked_dense_take(w, dout_t, x_t, rows_per_block * 23 * 8)
    rows, cols = np.nonzero(mask)
    np.testing.assert_allclose(B.to_host(got), (B.to_host(dout_t) @ B.to_host(x_t).T)[rows, cols], rtol=1e-12)


def test_dense_path_buffer_is_reused_and_rebuilt_on_a_topology_change(monkeypatch):
    force_paths(monkeypatch, ("dense", "dense+take"))
    layer = SparseLinear(20, 10, 0.3).astype("float64")
    x = B.to_device(np.random.default_rng(0).standard_normal((4, 20)))
    layer.forward(x)
    buffer = kernels.dense_copy(layer.weight)
    layer.weight.data[...] *= 2                       # SGD changed the values: re-scattered
    y = layer.forward(x)
    assert kernels.dense_copy(layer.weight) is buffer
    np.testing.assert_allclose(y, x @ layer.weight.csr.toarray().T + layer.bias.data, rtol=1e-12)
    w = layer.weight
    flat = w.flat_positions()[1:]                           # a new topology, one nonzero fewer
    w.set_topology(flat, w.data[1:].copy())
    y = layer.forward(x)
    assert kernels.dense_copy(w) is not buffer and np.count_nonzero(kernels.dense_copy(w)) == w.nnz
    np.testing.assert_allclose(y, x @ layer.weight.csr.toarray().T + layer.bias.data, rtol=1e-12)


def test_weight_is_a_true_csr_matrix():
    layer = SparseLinear(100, 50, 0.1)
    assert B.sparse.issparse(layer.weight.csr) and layer.weight.csr.format == "csr"
    assert layer.weight.shape == (50, 100) and layer.weight.nnz == 500
    assert layer.weight.data.dtype == np.float32 and layer.weight.csr.indices.dtype == np.int32
    assert layer.weight.data is layer.weight.csr.data   # the optimizer writes the CSR's own values
    assert not any(isinstance(v, np.ndarray) and v.size >= 5000 for v in vars(layer).values())


def test_exact_counts_and_distinct_sorted_positions():
    for numel, density in [(10, 0.5), (3072 * 1024, 0.0413), (1000, 0.999), (7, 1.0)]:
        k = active_count(density, numel)
        positions = B.to_host(random_positions(numel, k))
        assert positions.size == k == round(density * numel)
        assert np.all(np.diff(positions) > 0) and positions[0] >= 0 and positions[-1] < numel


def test_sampling_respects_exclusions_and_is_uniform(host_rng):
    excluded = np.array([0, 2, 4, 6, 8])
    counts = np.zeros(10)
    for _ in range(2000):
        counts[B.to_host(random_positions(10, 2, excluded=B.to_device(excluded)))] += 1
    assert counts[excluded].sum() == 0
    allowed = counts[[1, 3, 5, 7, 9]]
    assert np.all(np.abs(allowed / 2000 - 0.4) < 0.05)     # each odd position picked 2/5 of the time


def test_fan_in_scaling_uses_actual_fan_in():
    B.seed(1)
    layer = SparseLinear(1000, 200, 0.01, fan_in_scaling=True)
    fan_in = np.diff(layer.weight.csr.indptr)
    bound_per_nnz = 1 / np.sqrt(np.maximum(fan_in, 1))[layer.weight.rows()]
    assert np.all(np.abs(layer.weight.data) <= bound_per_nnz + 1e-7)
    assert np.abs(layer.weight.data).max() > 0.2      # far above the dense bound 1/sqrt(1000) = 0.032


def test_bad_density_is_rejected():
    with pytest.raises(ValueError, match="density must be in"):
        SparseLinear(4, 4, 0.0)
    with pytest.raises(ValueError, match="density must be in"):
        SparseConv2d(4, 4, 3, density=1.5)


def test_sddmm_matches_dense_then_take(host_rng):
    left, right = host_rng.standard_normal((30, 7)), host_rng.standard_normal((40, 7))
    rows, cols = host_rng.integers(0, 30, 5000), host_rng.integers(0, 40, 5000)
    np.testing.assert_allclose(sddmm(left, right, rows, cols), (left @ right.T)[rows, cols], rtol=1e-12)


def test_memory_is_proportional_to_nnz(host_rng):
    """3072x1024 at 99% sparsity after a training step (gradient, cached gather plan, momentum,
    explored set all held): < 5% of the bytes of its dense twin (weight, gradient, momentum)."""
    from tinyitop import SGD, Exploration
    from tinyitop.models import Sequential
    from tinyitop.topology import sparse_layers
    sparse = SparseLinear(3072, 1024, 0.01)
    model = Sequential([("fc", sparse)])
    opt = SGD(model.named_parameters())
    exploration = Exploration(sparse_layers(model))
    sparse.forward(host_rng.standard_normal((128, 3072)).astype(np.float32))
    sparse.backward(host_rng.standard_normal((128, 1024)).astype(np.float32))
    opt.step()
    assert "gather" in sparse.weight.kernel_cache     # the gather path ran and cached its plan
    held = (sparse.weight.nbytes() + sum(v.nbytes for v in opt.velocity.values())
            + exploration.sets["fc"].nbytes() + 2 * sparse.bias.data.nbytes)
    dense_twin = 3 * (3072 * 1024 + 1024) * 4
    assert held / dense_twin < 0.05, held / dense_twin


def test_sddmm_in_tiled_order_matches(host_rng):
    from tinyitop.sparse import SparseWeight
    weight = SparseLinear(2000, 50, 0.02).weight
    left, right = host_rng.standard_normal((50, 16)), host_rng.standard_normal((2000, 16))
    order, rows, cols = kernels.gather_plan(weight)
    expected = (left @ right.T)[B.to_host(weight.rows()), B.to_host(weight.csr.indices)]
    np.testing.assert_allclose(sddmm(left, right, rows, cols, order), expected, rtol=1e-12)
    assert isinstance(weight, SparseWeight)


def test_fan_in_scaling_keeps_deep_sparse_activations_alive(host_rng):
    """ALGORITHM.md's trap: at ~4% density each sparse layer keeps ~sqrt(density) of the signal.
    Measured (last hidden layer std): dense 0.058, sparse 0.010, sparse with fan-in scaling 0.059."""
    from tinyitop import mlp
    x = host_rng.standard_normal((64, 784)).astype(np.float32)

    def last_hidden_std(**options):
        B.seed(0)
        model = mlp(784, (1000, 1000, 1000), 10, **options)
        h = x
        for layer in model.layers()[:-1]:
            h = layer.forward(h)
        return float(np.std(h))
    dense = last_hidden_std()
    plain = last_hidden_std(sparsity=0.955, init="er")
    scaled = last_hidden_std(sparsity=0.955, init="er", fan_in_scaling=True)
    assert plain < 0.3 * dense and 0.7 * dense < scaled < 1.4 * dense


def test_conv_input_gradient_never_overwrites_columns_that_rigl_still_scores(monkeypatch):
    """On a CPU dcols is written over the spent im2col columns (no page faults), except on a RigL
    step whose layer is too big for a dense gradient: growth then scores the kept columns. (Today such
    a layer also multiplies on CSR, which writes a new array; the dense product is forced here.)"""
    from tinyitop import sparse_kernels
    from tinyitop.im2col import im2col
    from tinyitop.sparse import SparseConv2d
    monkeypatch.setattr(sparse_kernels, "DENSE_BUFFER_MAX_BYTES", 0)     # every layer "too big"
    layer = SparseConv2d(4, 6, 3, padding=1, density=0.5)
    layer.paths = lambda columns=None: ("dense", "dense+take")
    x = B.to_device(np.random.default_rng(0).standard_normal((3, 4, 8, 8)), dtype="float32")
    layer.keep_dense_grad = True
    layer.forward(x)
    layer.backward(B.to_device(np.random.default_rng(1).standard_normal((3, 6, 8, 8)), dtype="float32"))
    assert layer.grad_operands is not None
    np.testing.assert_array_equal(B.to_host(layer.grad_operands[1]), B.to_host(im2col(x, 3, 3, 1, 1)))


@pytest.mark.parametrize("shape", [(128, 1024), (1024, 128)], ids=["in>out: turned product", "in<=out: plain"])
@pytest.mark.parametrize("rigl", [False, True], ids=["dense+take", "RigL step"])
def test_dense_take_gradient_allocates_one_dense_buffer_only(monkeypatch, shape, rigl):
    """The dense+take gradient costs one (out, in) buffer, whatever the orientation of the product
    (a RigL step keeps that buffer for growth). A take through reshape(-1) of the turned product's
    transposed view copied the whole matrix: that made the paper MLP slower sparse than dense."""
    import tracemalloc
    force_paths(monkeypatch, ("dense", "dense+take"))
    n_out, n_in = shape
    layer = SparseLinear(n_in, n_out, 0.05)
    x = B.to_device(np.random.default_rng(0).standard_normal((16, n_in)), dtype="float32")
    dout = B.to_device(np.random.default_rng(1).standard_normal((16, n_out)), dtype="float32")
    layer.keep_dense_grad = rigl
    layer.forward(x)
    layer.backward(dout)                               # caches (positions, plans) made once, untraced
    tracemalloc.start()
    layer.backward(dout)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1.5 * n_out * n_in * 4, f"{peak / (n_out * n_in * 4):.2f} (out, in) buffers at peak"
    expected = (B.to_host(dout).T @ B.to_host(x)).reshape(-1)[B.to_host(layer.weight.flat_positions())]
    np.testing.assert_allclose(B.to_host(layer.weight.grad), expected, rtol=1e-5, atol=1e-5)


def test_rigl_growth_scores_a_turned_gradient_as_its_plain_twin(host_rng):
    """grow() reads a transposed-view gradient (weight_gradient's turned product) into C order: the
    same positions as from the C-contiguous gradient."""
    from tinyitop.topology import grow
    layer = SparseLinear(300, 40, 0.1)
    grad_t = B.to_device(host_rng.standard_normal((300, 40)), dtype="float32")       # (in, out)
    kept = layer.weight.flat_positions()
    turned = grow(layer.weight, kept, 25, "gradient", dense_grad=grad_t.T)
    plain = grow(layer.weight, kept, 25, "gradient", dense_grad=B.xp.ascontiguousarray(grad_t.T))
    np.testing.assert_array_equal(B.to_host(turned), B.to_host(plain))


@pytest.mark.parametrize("paths", PATHS)
def test_each_faster_kernel_equals_the_plain_expression_of_sparse_py(any_backend, monkeypatch, paths):
    """sparse.py writes each product plainly (CSR @ X, CSR^T @ dY, one dot product per nonzero) and calls
    a kernel of sparse_kernels.py when `faster` says so. At a size where every kernel applies (CSR split
    over threads, gather in chunks and in its cache order), each equals the plain expression: bit for bit
    on the CSR and gather paths, to float32 rounding on the dense ones."""
    force_paths(monkeypatch, paths)
    rng = np.random.default_rng(3)
    layer = SparseLinear(700, 600, 0.1)                                       # 42,000 nonzeros
    weight, xp = layer.weight, B.xp
    x_t = B.to_device(rng.standard_normal((700, 128)).astype(np.float32))     # (in, M)
    dout_t = B.to_device(rng.standard_normal((600, 128)).astype(np.float32))  # (out, M)
    if B.name == "numpy":                 # on a GPU the CSR kernels are cuSPARSE's and a gather is one chunk
        assert all(kernels.faster(weight, product, 128) for product in ("forward", "input grad", "weight grad"))
    rows, cols = weight.rows(), weight.csr.indices
    plain = {"forward": weight.csr @ x_t, "input grad": weight.csr.T @ dout_t,
             "weight grad": xp.einsum("km,km->k", dout_t[rows], x_t[cols])}
    fast = {"forward": kernels.forward(weight, x_t), "input grad": kernels.input_grad(weight, dout_t),
            "weight grad": kernels.grad_at_nonzeros(weight, dout_t, x_t)}
    exact = {"forward": paths[0] == "csr", "input grad": paths[0] == "csr", "weight grad": paths[1] == "gather"}
    for product in plain:
        got, expected = B.to_host(fast[product]), B.to_host(plain[product])
        if exact[product]:
            np.testing.assert_array_equal(got, expected, err_msg=product)
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=product)
