"""The prune-and-grow step and R_s, tested by invariants on NumPy and the CuPy stand-in."""
import math

import numpy as np
import pytest

from tinyitop import SGD, SoftmaxCrossEntropy, TopologyUpdater, backend as B, layer_densities, mlp, prune_rate_at
from tinyitop.explore import Exploration, ExploredSet
from tinyitop.topology import sparse_layers, prune_and_grow


def _host(a):
    return B.to_host(a)


def _trained_model(sparsity=0.8, hidden=(20,), seed=0):
    B.seed(seed)
    model = mlp(12, hidden, 4, sparsity=sparsity, init="uniform")
    opt = SGD(model.named_parameters(), lr=0.1)
    x = B.to_device(np.random.default_rng(seed).standard_normal((16, 12)), dtype="float32")
    labels = B.to_device(np.arange(16) % 4)
    return model, opt, x, labels


def _train_step(model, opt, x, labels, updater=None, step=None):
    loss_fn = SoftmaxCrossEntropy()
    if updater is not None:
        updater.prepare(step)
    loss_fn.forward(model.forward(x), labels)
    model.backward(loss_fn.backward())
    opt.step()


def test_erk_densities_of_the_paper_mlp():
    d = layer_densities({"fc1": (1024, 3072), "fc2": (512, 1024), "fc3": (10, 512)}, 0.05, "erk")
    assert round(d["fc1"], 4) == 0.0413 and round(d["fc2"], 4) == 0.0929 and d["fc3"] == 1.0
    total = 3072 * 1024 + 1024 * 512 + 512 * 10
    kept = d["fc1"] * 3072 * 1024 + d["fc2"] * 1024 * 512 + 5120
    assert math.isclose(kept, 0.05 * total)
    assert d == pytest.approx(layer_densities({"fc1": (1024, 3072), "fc2": (512, 1024), "fc3": (10, 512)},
                                              0.05, "er"))


def test_erk_for_convs_counts_kernel_dims():
    d = layer_densities({"a": (64, 3, 3, 3), "b": (64, 64, 3, 3)}, 0.1, "erk")
    raw_a, raw_b = (64 + 3 + 3 + 3) / (64 * 27), (64 + 64 + 3 + 3) / (64 * 64 * 9)
    assert d["a"] / d["b"] == pytest.approx(raw_a / raw_b)                  # kernel dims included
    assert d["a"] * 64 * 27 + d["b"] * 64 * 64 * 9 == pytest.approx(0.1 * 64 * 27 + 0.1 * 64 * 64 * 9)
    assert layer_densities({"a": (64, 3, 3, 3), "b": (64, 64, 3, 3)}, 0.3, "erk")["a"] == 1.0   # saturates
    with pytest.raises(ValueError, match="unknown init"):
        layer_densities({"a": (2, 2)}, 0.5, "magic")


@pytest.mark.parametrize("mode", ["random", "gradient", "unexplored"])
def test_update_invariants(any_backend, mode):
    model, opt, x, labels = _trained_model()
    layer = model.fc1
    weight = layer.weight
    exploration = Exploration(sparse_layers(model))
    layer.keep_dense_grad = mode == "gradient"
    for _ in range(3):
        _train_step(model, opt, x, labels)
    opt.velocity["fc1.weight"] = B.to_device(np.arange(1, weight.nnz + 1, dtype=np.float32))  # traceable
    before_pos, before_val = _host(weight.flat_positions()), _host(weight.data).copy()
    before_vel = _host(opt.velocity["fc1.weight"]).copy()
    nnz = weight.nnz
    rate = 0.3
    k = math.ceil(rate * nnz)
    dense_grad = _host(layer.dense_grad) if mode == "gradient" else None

    source, kept, grown = prune_and_grow(weight, rate, mode, exploration.sets["fc1"], layer.dense_grad)
    opt.remap(weight, source)
    after_pos, after_val = _host(weight.flat_positions()), _host(weight.data)
    after_vel = _host(opt.velocity["fc1.weight"])
    source, kept, grown = _host(source), _host(kept), _host(grown)

    assert weight.nnz == nnz == after_pos.size                         # nnz conserved
    assert np.all(np.diff(after_pos) > 0)                              # sorted, no duplicates
    assert after_pos.min() >= 0 and after_pos.max() < weight.numel
    indices, indptr = _host(weight.csr.indices), _host(weight.csr.indptr)
    assert indptr[0] == 0 and indptr[-1] == nnz and np.all(np.diff(indptr) >= 0)
    for r in range(weight.shape[0]):                                   # column indices sorted per row
        assert np.all(np.diff(indices[indptr[r]:indptr[r + 1]]) > 0)
    assert grown.size == k and kept.size == nnz - k
    # Pruned are the k smallest magnitudes; survivors keep value and momentum.
    pruned = np.setdiff1d(before_pos, kept)
    assert np.abs(before_val[np.isin(before_pos, pruned)]).max() <= np.abs(before_val[np.isin(before_pos, kept)]).min()
    survivor = source >= 0
    np.testing.assert_array_equal(after_val[survivor], before_val[source[survivor]])
    np.testing.assert_array_equal(after_vel[survivor], before_vel[source[survivor]])
    # Grown weights and their momentum are exactly 0; they sit where nothing survived.
    grown_slots = np.isin(after_pos, grown)
    assert np.all(after_val[grown_slots] == 0) and np.all(after_vel[grown_slots] == 0)
    assert not np.isin(grown, kept).any()
    if mode == "gradient":      # the top-|grad| inactive positions, by brute force
        scores = np.abs(dense_grad).reshape(-1).copy()
        scores[kept] = -np.inf
        best = np.sort(np.argsort(-scores, kind="stable")[:k])
        assert np.abs(dense_grad).reshape(-1)[grown].min() >= np.abs(dense_grad).reshape(-1)[best].min()
        np.testing.assert_allclose(np.sort(np.abs(dense_grad).reshape(-1)[grown]),
                                   np.sort(np.abs(dense_grad).reshape(-1)[best]))
    if mode == "unexplored":    # nothing explored is regrown while unexplored positions remain
        assert not np.isin(grown, before_pos).any()


def test_unexplored_growth_fills_the_layer_before_reusing():
    B.seed(3)
    model = mlp(10, (), 10, sparsity=0.8, init="uniform")    # one 10x10 layer, 20 weights
    weight = model.fc1.weight
    exploration = Exploration(sparse_layers(model))
    explored = exploration.sets["fc1"]
    for _ in range(8):        # 20 initial + 8 x 10 fresh = all 100 positions
        unexplored_before = weight.numel - explored.count()
        before = set(B.to_host(explored.positions).tolist())
        _, kept, grown = prune_and_grow(weight, 0.5, "unexplored", explored)
        explored.record_update(kept, grown)
        fresh = [p for p in B.to_host(grown).tolist() if p not in before]
        assert len(fresh) == min(len(grown), unexplored_before)
    assert exploration.rs() == 1.0


def test_rs_hand_computed_union():
    """Masks {0,1,2} -> {0,1,5} -> {0,6,7} on a 2x5 layer: union {0,1,2,5,6,7}, R_s = 0.6."""
    explored = ExploredSet(10, B.to_device(np.array([0, 1, 2])))
    assert explored.count() == 3 and explored.reliable_count() == 3
    explored.record_update(kept=B.to_device(np.array([0, 1])), grown=B.to_device(np.array([5])))
    assert explored.count() == 4 and explored.reliable_count() == 3      # 5 not yet reliable
    explored.record_update(kept=B.to_device(np.array([0])), grown=B.to_device(np.array([6, 7])))
    assert explored.count() == 6                                         # 5 was pruned: never reliable
    assert explored.reliable_count() == 3
    explored.record_update(kept=B.to_device(np.array([0, 6])), grown=B.to_device(np.array([1, 9])))
    assert sorted(B.to_host(explored.positions).tolist()) == [0, 1, 2, 5, 6, 7, 9]
    assert explored.reliable_count() == 4                                # 6 survived its next prune


def _run(method, steps=60, interval=5, growth=None, sparsity=0.9):
    model, opt, x, labels = _trained_model(sparsity=sparsity, hidden=(30,))
    exploration = Exploration(sparse_layers(model))
    updater = TopologyUpdater(model, opt, exploration, method=method, growth=growth, update_interval=interval,
                              prune_rate=0.5, total_steps=steps)
    history = [exploration.rs()]
    nnz = {n: l.weight.nnz for n, l in sparse_layers(model).items()}
    for step in range(1, steps + 1):
        _train_step(model, opt, x, labels, updater, step)
        if updater.maybe_update(step) is not None:
            exploration.record_updates(updater.last_update)
            history.append(exploration.rs())
            assert {n: l.weight.nnz for n, l in sparse_layers(model).items()} == nnz
    return model, exploration, history


def test_rs_starts_at_density_and_never_decreases(any_backend):
    model, exploration, history = _run("set")
    total = sum(l.weight.numel for l in sparse_layers(model).values())
    nnz = sum(l.weight.nnz for l in sparse_layers(model).values())
    assert history[0] == nnz / total                        # = 1 - sparsity, ERK-aware
    assert all(b >= a for a, b in zip(history, history[1:]))
    assert history[-1] > history[0]
    assert exploration.rs_reliable() <= exploration.rs()


def test_static_training_keeps_rs_constant():
    _, exploration, history = _run("static")
    assert len(history) == 1 and exploration.rs() == history[0]


def test_rs_reaches_one_when_exploring_long_enough():
    _, exploration, _ = _run("set", steps=400, interval=2, sparsity=0.5)
    assert exploration.rs() == 1.0


def test_rigl_explores_less_than_set():
    _, set_exploration, _ = _run("set")
    _, rigl_exploration, _ = _run("rigl")
    assert rigl_exploration.rs() < set_exploration.rs()


def test_prune_rate_cosine():
    assert prune_rate_at(0, 100, 0.5) == pytest.approx(0.5)
    assert prune_rate_at(50, 100, 0.5) == pytest.approx(0.005 + 0.5 * 0.495)
    assert prune_rate_at(100, 100, 0.5) == pytest.approx(0.005)


def test_bad_options_are_rejected():
    model, opt, _, _ = _trained_model()
    exploration = Exploration(sparse_layers(model))
    with pytest.raises(ValueError, match="does not grow by"):
        TopologyUpdater(model, opt, exploration, method="set", growth="gradient")
    with pytest.raises(ValueError, match="update_interval"):
        TopologyUpdater(model, opt, exploration, update_interval=0)
    with pytest.raises(ValueError, match="unknown growth"):
        TopologyUpdater(model, opt, exploration, growth="magic")


def test_stop_exploration_freezes_rs():
    model, opt, x, labels = _trained_model(sparsity=0.9, hidden=(30,))
    exploration = Exploration(sparse_layers(model))
    updater = TopologyUpdater(model, opt, exploration, update_interval=5, total_steps=100,
                              stop_exploration_step=20)
    for step in range(1, 101):
        _train_step(model, opt, x, labels, updater, step)
        if updater.maybe_update(step) is not None:
            exploration.record_updates(updater.last_update)
        if step == 20:
            frozen = exploration.rs()
    assert exploration.rs() == frozen


def test_sparsify_keeps_named_layers_dense_and_out_of_rs():
    from tinyitop import resnet18, sparsify
    from tinyitop.layers import Conv2d, Linear
    from tinyitop.sparse import SparseConv2d
    model = sparsify(resnet18(), 0.9, "erk", dense_layers=("conv1", "linear"))
    assert type(model.conv1) is Conv2d and type(model.linear) is Linear
    assert isinstance(getattr(model.layer1, "0").branch.conv1, SparseConv2d)
    layers = sparse_layers(model)
    assert "conv1" not in layers and "linear" not in layers and "layer4.1.conv2" in layers
    total = sum(l.weight.numel for l in layers.values())
    nnz = sum(l.weight.nnz for l in layers.values())
    assert nnz / total == pytest.approx(0.1, abs=1e-4)       # the budget is over the sparse layers only
    assert Exploration(layers).rs() == pytest.approx(0.1, abs=1e-4)
    with pytest.raises(ValueError, match="names no layer"):
        sparsify(resnet18(), 0.9, dense_layers=("fc9",))


@pytest.mark.parametrize("rows_per_block", [1, 7, 1000])
def test_blocked_gradient_growth_picks_the_same_positions_as_the_dense_gradient(any_backend, rows_per_block):
    """RigL without a dense gradient: scoring |dY X^T| one block of rows at a time, with a running
    top-k, grows exactly where the whole dense gradient would."""
    from tinyitop.topology import grow, top_gradient_positions
    rng = np.random.default_rng(5)
    model = mlp(40, (), 30, sparsity=0.8, init="uniform")         # one 30x40 layer
    weight = model.fc1.weight
    dout_t = B.to_device(rng.standard_normal((30, 16)).astype(np.float32))   # (out, M)
    x_t = B.to_device(rng.standard_normal((40, 16)).astype(np.float32))      # (in, M)
    kept = weight.flat_positions()[::2]
    k = 50
    dense = grow(weight, kept, k, "gradient", dense_grad=dout_t @ x_t.T)
    blocked = top_gradient_positions(weight, kept, k, dout_t, x_t, max_bytes=rows_per_block * 40 * 4)
    np.testing.assert_array_equal(_host(blocked), _host(dense))
    assert not np.isin(_host(blocked), _host(kept)).any() and _host(blocked).size == k
