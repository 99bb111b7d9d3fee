"""The run's figures: titles name the run, empty panels say why, the mask crop is the layer's mask."""

import json

import numpy as np
import pytest

from tinyitop import plots
from tinyitop.cli import main as cli_main
from tinyitop.report import mask_crop
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
    for name in ("training.png", "exploration.png", "mask_evolution.png", "mask_evolution.gif"):
        assert (out / name).stat().st_size > 10_000, name
    title = plots.run_title(str(out))
    assert title.startswith("mlp 64 on synthetic: set (random growth), sparsity 0.9") and "Delta T 5" in title
    updates = read_jsonl(str(out / "updates.jsonl"))
    assert updates and updates[0]["crop_layer"] == "fc1" and updates[0]["crop_shape"] == [48, 48]
    for update in updates:            # grown ones are active at that update; all inside the crop
        assert set(update["crop_grown"]) <= set(update["crop_active"])
        assert all(0 <= p < 48 * 48 for p in update["crop_active"])


def test_the_mask_animation_has_a_frame_per_update_showing_that_update(tmp_path, capsys):
    """mask_evolution.gif: one frame per update (evenly chosen beyond max_frames); each frame's mask
    panel is that update's mask: its active positions black, its grown ones orange."""
    from PIL import Image
    out = _train(tmp_path, "set", "--update-interval", "5")
    updates = read_jsonl(str(out / "updates.jsonl"))
    with Image.open(out / "mask_evolution.gif") as gif:
        assert gif.n_frames == len(updates) > 1
    pictures = plots._mask_pictures(updates)
    for update, picture in zip(updates, pictures):
        flat = picture.reshape(-1, 3)
        grown = set(update["crop_grown"])
        black = {p for p in update["crop_active"] if p not in grown}
        assert {i for i, c in enumerate(flat) if tuple(c) == (0.1, 0.1, 0.1)} == black
        assert {i for i, c in enumerate(flat) if tuple(c) == (1.0, 0.5, 0.0)} == grown
    short = plots.mask_animation(str(out), str(tmp_path / "short.gif"), max_frames=3)
    with Image.open(short) as gif:
        assert gif.n_frames == 3


def test_a_run_without_updates_says_why_and_draws_no_mask_evolution(tmp_path, capsys):
    out = _train(tmp_path, "never", "--update-interval", "5000")
    rows = read_jsonl(str(out / "metrics.jsonl"))
    reason = plots._no_update_reason(rows, str(out))
    assert "Delta T (5000) > iterations" in reason
    assert not (out / "mask_evolution.png").exists() and plots.mask_evolution(str(out)) is None
    assert not (out / "mask_evolution.gif").exists() and plots.mask_animation(str(out)) is None
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


def test_a_sweep_bar_figure_shows_every_error_bar_and_never_magnifies_noise(tmp_path, monkeypatch):
    """Two bars at 0.859, one +- 0.004: the axis holds both bars' tops and the whole error bar, and
    spans at least 2% of the value (it once showed 0.8575-0.86 and clipped the error bar)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tinyitop import plots
    limits = []
    monkeypatch.setattr(plt, "close", lambda fig: limits.append(fig.axes[0].get_ylim()))
    rows = [{"label": "a", "test_acc_at_best_val": 0.859, "test_acc_at_best_val_std": 0.004},
            {"label": "b", "test_acc_at_best_val": 0.859, "test_acc_at_best_val_std": None}]
    plots.sweep_figure(rows, {"x": "label", "y": ["test_acc_at_best_val"]}, str(tmp_path / "r.png"), "t")
    low, high = limits[0]
    assert low <= 0.855 and high >= 0.863 and high - low >= 0.02 * 0.859


def test_sweep_curves_average_the_seeds_of_a_group_and_say_so(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tinyitop import plots
    for seed, accuracies in enumerate(([0.5, 0.6], [0.7, 0.8])):
        (tmp_path / f"s{seed}").mkdir()
        (tmp_path / f"s{seed}" / "metrics.jsonl").write_text("".join(
            json.dumps({"epoch": e + 1, "test_acc": a, "rs": 0.1}) + "\n" for e, a in enumerate(accuracies)))
    drawn = []
    monkeypatch.setattr(plt, "close", lambda fig: drawn.append(fig.axes[0].get_lines()[0]))
    plots.sweep_curves({"SET": [str(tmp_path / "s0"), str(tmp_path / "s1")]}, str(tmp_path / "c.png"), "t")
    line = drawn[0]
    assert list(line.get_ydata()) == pytest.approx([0.6, 0.7]) and line.get_label() == "SET (mean of 2 seeds, band: min-max)"


def test_the_mask_figures_say_what_a_conv_layers_rows_and_columns_are():
    """A conv's mask is (out channels, in channels x kh x kw): the figures say so, not 'input units 0-26'."""
    from tinyitop.report import matrix_words
    from tinyitop.sparse import SparseConv2d, SparseLinear
    conv = matrix_words(SparseConv2d(3, 8, 3, padding=1, density=0.5))
    assert conv == {"layer": "a 3x3 convolution", "rows": "output channels",
                    "columns": "(input channel, 3x3 kernel offset) pairs, 3 x 9"}
    assert matrix_words(SparseLinear(6, 4, density=0.5))["columns"] == "input units"
