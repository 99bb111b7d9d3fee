"""demos/itop_from_scratch.py is the specification: trained with the same seed, settings and random
draws, tinyitop finds the same masks and R_s at every topology update and the same losses."""
import importlib.util
import json
import os

import numpy as np
import pytest

from tinyitop import backend as B
from tinyitop.data import load, normalise, split_validation
from tinyitop.init import random_positions
from tinyitop.topology import sparse_layers
from tinyitop.train import Config, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = dict(hidden=(64, 32), sparsity=0.9, epochs=3, batch_size=128, lr=0.05, update_interval=4,
                prune_rate=0.5)
# ERK makes the last layer dense at 0.8 (so the file's guard that leaves a dense layer alone matters),
# and Delta T 3 divides the run's 87 iterations (so "no update on the last iteration" matters).
SETTINGS_DENSE_LAST = {**SETTINGS, "sparsity": 0.8, "update_interval": 3}
FILE = os.path.join(ROOT, "demos", "itop_from_scratch.py")


def from_scratch(path=FILE):
    spec = importlib.util.spec_from_file_location("itop_from_scratch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def handing_tinyitops_draws(scratch):
    """The from-scratch file draws plainly (rng.choice, rng.uniform); tinyitop samples positions by
    rejection and draws U(-b, b) as r * 2b - b. Give the file tinyitop's draws, from the same seeds.
    The file's own sampler still runs on every call, and its draw is checked: k distinct sorted
    positions in [0, numel), none of them excluded (so a sampler that grows into occupied positions
    fails here, though its numbers are not the ones used)."""
    own = scratch.random_positions
    checks = np.random.default_rng(12345)

    def positions(rng, numel, k, excluded=()):
        drawn = np.asarray(own(checks, numel, k, excluded))
        assert drawn.size == k and np.all(np.diff(drawn) > 0) and (k == 0 or 0 <= drawn[0] <= drawn[-1] < numel), \
            "the file's sampler must give k distinct sorted positions"
        assert not np.isin(drawn, excluded).any(), "the file's sampler grew into an excluded (occupied) position"
        excluded = np.asarray(excluded, dtype=np.int64)
        return random_positions(numel, k, excluded if excluded.size else None, rng=rng)

    def uniform(rng, size, bound):
        return (rng.random(size, dtype=np.float32) * (2 * bound) - bound).astype(np.float32)
    scratch.random_positions, scratch.uniform = positions, uniform


@pytest.mark.parametrize("settings", [SETTINGS, SETTINGS_DENSE_LAST], ids=["all sparse", "ERK-dense last layer"])
def test_tinyitop_trains_as_the_from_scratch_file(tmp_path, monkeypatch, settings):
    if B.name != "numpy":
        pytest.skip("the from-scratch file is NumPy + scipy.sparse; compared on the NumPy backend")
    assert_trains_as(from_scratch(), settings, tmp_path, monkeypatch)


def assert_trains_as(scratch, settings, tmp_path, monkeypatch):
    """Train the from-scratch module `scratch` and tinyitop with the same draws; AssertionError at
    the first mask, R_s, loss or count that differs."""
    handing_tinyitops_draws(scratch)
    data = load("synthetic", synthetic_shape=(3, 32, 32))
    (x, y), _ = split_validation(data.train_x, data.train_y, 0.0, seed=0)      # tinyitop's order of the set
    flat = normalise(x, data.mean, data.std).reshape(len(x), -1)
    test_x = normalise(data.test_x, data.mean, data.std).reshape(len(data.test_x), -1)
    expected = []

    def record(step, layers, rs, rs_reliable):
        expected.append((step, [scratch.flat_positions(layer["W"]) for layer in layers], rs, rs_reliable))
    _, losses = scratch.train(((flat, y), (test_x, data.test_y)), **settings, init_rng=np.random.default_rng(0),
                              grow_rng=np.random.default_rng(1), data_rng=np.random.default_rng(0),
                              on_update=record)

    seen = []
    import tinyitop.train as train_module
    original = train_module.update_row

    def watched(setup, step, epoch, rate):          # the loop logs each update once its explored sets grew
        seen.append((step, [B.to_host(l.weight.flat_positions()) for l in sparse_layers(setup.model).values()],
                     setup.exploration.rs(), setup.exploration.rs_reliable()))
        return original(setup, step, epoch, rate)
    monkeypatch.setattr(train_module, "update_row", watched)
    run = train(Config(model="mlp", dataset="synthetic", method="set", init="erk", val_fraction=0.0, seed=0,
                       out=str(tmp_path / "run"), progress=False, overwrite=True, **settings), log=lambda *_: None)

    assert len(expected) >= 10 and [s[0] for s in seen] == [e[0] for e in expected]
    for (step, masks, rs, reliable), (_, ours, our_rs, our_reliable) in zip(expected, seen):
        assert len(masks) == len(ours), f"{len(masks)} layers in the file, {len(ours)} sparse ones in tinyitop"
        for mask, our_mask in zip(masks, ours):
            np.testing.assert_array_equal(mask, our_mask, err_msg=f"mask after the update at iteration {step}")
        assert our_rs == pytest.approx(rs, abs=1e-12) and our_reliable == pytest.approx(reliable, abs=1e-12)
    assert expected[-1][2] > expected[0][2] > 1 - settings["sparsity"] + 1e-3     # R_s grew beyond the density
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    np.testing.assert_allclose([r["train_loss"] for r in rows], losses, rtol=1e-5)
    assert run.summary["final_rs"] == pytest.approx(expected[-1][2], abs=1e-12)
