"""The run's figures: titles name the run, empty panels say why, the mask crop is the engine's mask."""

import numpy as np

from tinyitop import plots
from tinyitop.cli import main as cli_main
from tinyitop.explore import mask_crop
from tinyitop.metrics import read_jsonl
from tinyitop.models import mlp
from tinyitop.topology import sparse_layers


def _train(tmp_path, name, *extra):
    out = tmp_path / name
    args = ["train", "--dataset", "synthetic", "--hidden", "64", "--epochs", "2", "--sparsity", "0.9",
            "--lr", "0.05", "--out", str(out), "--no-progress", *extra]
    assert cli_main(args) == 0
    return out


def test_a_set_run_draws_three_figures_titled_with_its_settings(tmp_path, capsys):
    out = _train(tmp_path, "set", "--update-interval", "5")
    for name in ("training.png", "exploration.png", "mask_evolution.png"):
        assert (out / name).stat().st_size > 10_000, name
    title = plots.run_title(str(out))
    assert title.startswith("mlp 64 on synthetic: set (random growth), sparsity 0.9") and "Delta T 5" in title
    updates = read_jsonl(str(out / "updates.jsonl"))
    assert updates and updates[0]["crop_layer"] == "fc1" and updates[0]["crop_shape"] == [48, 48]
    for update in updates:            # grown ones are active at that update; all inside the crop
        assert set(update["crop_grown"]) <= set(update["crop_active"])
        assert all(0 <= p < 48 * 48 for p in update["crop_active"])


def test_a_run_without_updates_says_why_and_draws_no_mask_evolution(tmp_path, capsys):
    out = _train(tmp_path, "never", "--update-interval", "5000")
    rows = read_jsonl(str(out / "metrics.jsonl"))
    reason = plots._no_update_reason(rows, str(out))
    assert "Delta T (5000) > iterations" in reason
    assert not (out / "mask_evolution.png").exists() and plots.mask_evolution(str(out)) is None
    static = _train(tmp_path, "static", "--method", "static")
    assert "method 'static' keeps its mask fixed" in plots._no_update_reason([], str(static))
    assert "Delta T" not in plots.run_title(str(static))


def test_mask_crop_is_the_layer_mask_inside_the_corner():
    model = mlp(60, (50,), 3, sparsity=0.8, init="uniform")
    weight = sparse_layers(model)["fc1"].weight                   # (50, 60)
    dense_mask = np.zeros(50 * 60, dtype=bool)
    dense_mask[weight.flat_positions()] = True
    crop = mask_crop(weight, weight.flat_positions()[:5], size=48)
    expected = np.flatnonzero(dense_mask.reshape(50, 60)[:48, :48].reshape(-1))
    assert crop["crop_shape"] == [48, 48] and crop["crop_active"] == expected.tolist()
    assert set(crop["crop_grown"]) <= set(crop["crop_active"])
