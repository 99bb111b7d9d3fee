"""GMP, SNIP, LTH and their -SET-ITOP versions; FLOPs counted on a hand-computed example."""

import numpy as np
import pytest

from tinyitop import backend as B
from tinyitop.baselines import GradualPruner, global_top_masks, snip_masks
from tinyitop.flops import FlopCounter
from tinyitop.layers import Conv2d, Flatten, Linear, ReLU, Sequential
from tinyitop.metrics import read_jsonl
from tinyitop.models import mlp, sparsify
from tinyitop.optim import SGD

from tinyitop.topology import sparse_layers
from tinyitop.train import Config, build_model, train, train_dense_twin
from tinyitop.data import make_synthetic


def _config(tmp_path, **overrides):
    settings = dict(dataset="synthetic", hidden=(32, 16), epochs=3, update_interval=10, lr=0.05, sparsity=0.9,
                    out=str(tmp_path / "run"), progress=False)
    settings.update(overrides)
    return Config(**settings)


def test_flops_on_a_hand_computed_example():
    """MLP 4 -> 3 -> 2: dense forward = 2 * (12 + 6) = 36 FLOPs per sample."""
    model = mlp(4, (3,), 2)
    counter = FlopCounter(model, (4,))
    assert counter.forward_dense == 36 and counter.test_relative() == 1.0
    sparsify(model, 0.5, "uniform", dense_layers=("fc2",))       # fc1 keeps 6 of its 12 weights
    counter = FlopCounter(model, (4,))
    assert counter.forward_sparse == 2 * (6 + 6) and counter.test_relative() == pytest.approx(24 / 36)
    counter.step(5)                                                # 3 x forward x batch
    assert counter.train_flops == 3 * 24 * 5 and counter.dense_train_flops == 3 * 36 * 5
    counter.step(5, dense_grad_layers=["fc1"])                     # RigL: dense dW of fc1, 2*(12-6) more
    assert counter.train_flops == 2 * 3 * 24 * 5 + 2 * 6 * 5
    assert counter.train_relative() == pytest.approx((2 * 360 + 60) / (2 * 540))


def test_conv_flops_count_output_positions():
    model = Sequential([("conv", Conv2d(1, 2, 3, padding=1)), ("relu", ReLU()), ("flat", Flatten()),
                        ("fc", Linear(32, 3))])
    counter = FlopCounter(model, (1, 4, 4))
    assert counter.forward_dense == 2 * 18 * 16 + 2 * 96   # 3x3x1x2 weights at 4x4 outputs; 32x3 linear


def test_global_top_masks_by_brute_force(host_rng):
    scores = {"a": host_rng.random((3, 4)), "b": host_rng.random((5,))}
    masks = global_top_masks(scores, 0.4)                 # round(0.4 * 17) = 7 positions
    flat = np.concatenate([scores["a"].reshape(-1), scores["b"]])
    best = set(np.argsort(-flat)[:7].tolist())
    chosen = set(masks["a"].tolist()) | {12 + p for p in masks["b"].tolist()}
    assert chosen == best


def test_snip_keeps_exactly_the_top_grad_times_weight(host_rng):
    model = mlp(6, (5,), 3)
    x = B.to_device(host_rng.standard_normal((8, 6)), dtype="float32")
    y = B.to_device(host_rng.integers(0, 3, 8))
    masks = snip_masks(model, x, y, 0.3)
    scores = np.concatenate([np.abs(model.fc1.weight.grad * model.fc1.weight.data).reshape(-1),
                             np.abs(model.fc2.weight.grad * model.fc2.weight.data).reshape(-1)])
    keep = round(0.3 * scores.size)
    best = set(np.argsort(-scores)[:keep].tolist())
    assert set(masks["fc1"].tolist()) | {30 + p for p in masks["fc2"].tolist()} == best
    values = model.fc1.weight.data.reshape(-1)[masks["fc1"]]
    sparsify(model, 0.7, masks=masks)
    np.testing.assert_array_equal(model.fc1.weight.data, values)    # initial values kept


def test_snip_and_snip_set_train(tmp_path):
    static = train(_config(tmp_path, method="snip", out=str(tmp_path / "snip"))).summary
    explored = train(_config(tmp_path, method="snip-set", out=str(tmp_path / "snipset"))).summary
    assert static["final_rs"] == pytest.approx(0.1, abs=2e-3)
    assert explored["final_rs"] > static["final_rs"] + 0.05


def test_lth_rewinds_to_the_stored_initial_weights(tmp_path):
    config = _config(tmp_path, method="lth", epochs=2)
    data = make_synthetic()
    from tinyitop.data import split_validation
    (train_x, train_y), _ = split_validation(data.train_x, data.train_y, 0.1, 0)
    B.seed(0)
    train_dense_twin(config, log=lambda *a: None)                                 # LTH's step 1, as train() does
    ticket = build_model(config, data, train_x, train_y, log=lambda *a: None)
    dense_dir = tmp_path / "run" / "dense"
    assert (dense_dir / "summary.json").exists()
    with np.load(dense_dir / "init.npz") as init, np.load(dense_dir / "checkpoint.npz") as final:
        for name in ("fc1", "fc2", "fc3"):
            weight = ticket.parameter(f"{name}.weight")
            positions = weight.flat_positions()
            np.testing.assert_array_equal(weight.data, init[f"{name}.weight"].reshape(-1)[positions])
            trained = final[f"param/{name}.weight"].reshape(-1)
            assert not np.array_equal(trained[positions], init[f"{name}.weight"].reshape(-1)[positions])
        # the kept positions are the global largest trained magnitudes
        trained = np.concatenate([np.abs(final[f"param/{n}.weight"]).reshape(-1) for n in ("fc1", "fc2", "fc3")])
        threshold = np.sort(trained)[-round(0.1 * trained.size)]
        kept = np.concatenate([np.abs(final[f"param/{n}.weight"]).reshape(-1)[ticket.parameter(f"{n}.weight").flat_positions()]
                               for n in ("fc1", "fc2", "fc3")])
        assert kept.min() >= threshold


def test_lth_set_explores_and_counts_the_dense_budget(tmp_path):
    summary = train(_config(tmp_path, method="lth-set", epochs=2)).summary
    assert summary["final_rs"] > 0.11
    assert summary["train_flops_rel"] > 1.0       # the dense run is part of LTH's cost


def test_gmp_prunes_on_a_cubic_schedule_and_never_grows(host_rng):
    model = sparsify(mlp(20, (30,), 4), 0.0, "uniform")
    opt = SGD(model.named_parameters())
    pruner = GradualPruner(model, opt, 0.9, "uniform", start_step=10, end_step=50, interval=10)
    nnz = []
    for step in range(1, 61):
        for _, p in model.named_parameters():
            p.grad = B.xp.zeros_like(p.data)
        before = {n: set(B.to_host(l.weight.flat_positions()).tolist()) for n, l in sparse_layers(model).items()}
        pruner.maybe_prune(step)
        for n, l in sparse_layers(model).items():
            assert set(B.to_host(l.weight.flat_positions()).tolist()) <= before[n]   # no growth
            assert opt.velocity[f"{n}.weight"].shape == l.weight.data.shape
        nnz.append(sum(l.weight.nnz for l in sparse_layers(model).values()))
    assert nnz == sorted(nnz, reverse=True)
    assert nnz[-1] == round(0.1 * 600) + round(0.1 * 120)       # final density reached per layer
    assert pruner.target_density("fc1", 30) == pytest.approx(1 - 0.9 * (1 - 0.5 ** 3))


def test_gmp_run_reaches_the_target(tmp_path):
    run = train(_config(tmp_path, method="gmp", epochs=3, update_interval=5))
    rows = read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
    densities = [sum(r["nnz_per_layer"].values()) / sum(l.weight.numel for l in sparse_layers(run.model).values())
                 for r in rows]
    assert densities[-1] == pytest.approx(0.1, abs=2e-3) and densities[0] > densities[-1]
    assert rows[-1]["rs"] == 1.0                               # it started dense: everything was explored
    assert 0.1 < rows[-1]["train_flops_rel"] < 1.0 and rows[-1]["test_flops_rel"] == pytest.approx(0.1, abs=2e-3)


def test_rigl_pays_for_dense_gradients(tmp_path):
    set_run = train(_config(tmp_path, method="set", out=str(tmp_path / "set"), update_interval=2)).summary
    rigl_run = train(_config(tmp_path, method="rigl", out=str(tmp_path / "rigl"), update_interval=2)).summary
    assert rigl_run["train_flops_rel"] > set_run["train_flops_rel"]
    assert set_run["train_flops_rel"] == pytest.approx(set_run["test_flops_rel"], rel=0.01)


