"""demos/million_neurons.py on small layers: its ER epsilon, its report, its option errors."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tinyitop.init import layer_densities

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "demos", "million_neurons.py")


def _demo():
    spec = importlib.util.spec_from_file_location("million_neurons", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args):
    return subprocess.run([sys.executable, DEMO, *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TINYITOP_BACKEND="numpy"))


@pytest.mark.parametrize("width", [333_333, 33_333, 500])
def test_the_sparsity_gives_each_layer_epsilon_times_its_in_plus_out_weights(width):
    demo = _demo()
    sizes = [784, width, width, width, 10]
    shapes = {f"fc{i + 1}": (sizes[i + 1], sizes[i]) for i in range(4)}
    densities = layer_densities(shapes, 1 - demo.sparsity_for_epsilon(sizes, demo.EPSILON), "er")
    for name, (n_out, n_in) in shapes.items():
        assert densities[name] * n_out * n_in == pytest.approx(demo.EPSILON * (n_out + n_in), rel=1e-9), name
    assert demo.PAPER.sparsity == pytest.approx(0.999964, abs=1e-6)      # the figure the docstring quotes


def test_quick_run_reports_cost_result_and_dense_equivalent(tmp_path):
    out = tmp_path / "million"
    result = _run("--quick", "--width", "300", "--dataset", "synthetic", "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    report = (out / "report.md").read_text()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    active = sum(metrics[-1]["nnz_per_layer"].values())
    dense = 3072 * 300 + 300 * 300 * 2 + 300 * 10                        # synthetic: 3x32x32 inputs
    assert "3072-300-300-300-10 (900 hidden neurons)" in report
    assert f"{active:,} of {dense:,}" in report
    assert f"{summary['last_test_acc']:.4f}" in report and "set (random growth)" in report
    assert f"{dense * 4 / 2 ** 30:,.1f} GiB" in report
    assert metrics[-1]["peak_rss_mb"] > 10 and 0 < metrics[-1]["train_seconds"] <= metrics[-1]["seconds"]
    assert report in result.stdout


def test_rigl_quick_and_bad_width(tmp_path):
    result = _run("--quick", "--method", "rigl", "--width", "200", "--dataset", "synthetic",
                  "--out", str(tmp_path / "rigl"), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "rigl (gradient growth)" in (tmp_path / "rigl" / "report.md").read_text()
    bad = _run("--width", "5", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("error:")
    assert "--width" in bad.stderr and not (tmp_path / "bad").exists()


def test_rigl_quick_is_narrower_and_each_method_gets_its_own_folder():
    demo = _demo()
    parser = __import__("argparse").ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=demo.PAPER.out)
    demo.add_arguments(parser)
    from tinyitop.cli import default_out
    base = demo.PAPER.to_json()
    rigl = demo.adjust(parser.parse_args(["--quick", "--method", "rigl"]),
                       {**base, "out": default_out(demo.PAPER, demo.PAPER.dataset, quick=True)})
    full = demo.adjust(parser.parse_args([]), base)
    assert rigl["hidden"] == (demo.RIGL_QUICK_HIDDEN,) * 3 and rigl["method"] == "rigl"
    assert full["hidden"] == (demo.HIDDEN,) * 3 and full["method"] == "set"
    assert rigl["out"] == "runs/million_neurons_rigl_quick" and full["out"] == "runs/million_neurons_set"
    fashion = demo.adjust(parser.parse_args(["--quick"]), {**base, "out": default_out(demo.PAPER, "synthetic", quick=True)})
    assert fashion["out"] == "runs/million_neurons_set_synthetic_quick"


def test_rs_of_a_very_sparse_net_is_printed_in_significant_digits():
    from tinyitop.metrics import format_rs
    assert format_rs(0.1234567) == "0.1235" and format_rs(0.0) == "0.0000"
    assert format_rs(3.6028e-05) == "3.6e-05"
