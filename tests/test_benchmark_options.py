"""Every benchmark checks its options before any timing: a bad value is one `error:` line, exit 2."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("args, fragment", [
    (["bench_breakeven.py", "--batch", "0"], "--batch"), (["bench_breakeven.py", "--repeats", "0"], "--repeats"),
    (["bench_breakeven.py", "--shapes", "0"], "--shapes"),
    (["bench_breakeven.py", "--replot", "missing.txt"], "not a file"),
    (["bench_breakeven.py", "--replot", "README.md"], "holds no table"),
    (["bench_breakeven.py", "--plot", "/no/such/folder/x.png"], "not writable"),
    (["bench_paths.py", "--models", "bogus"], "--models"), (["bench_paths.py", "--repeats", "0"], "--repeats"),
    (["bench_sparse.py", "--sections", "XYZ"], "--sections"), (["bench_sparse.py", "--one", "bogus"], "--one"),
    (["bench_layers.py", "--repeats", "-1"], "--repeats"), (["bench_rigl_memory.py", "--hidden", "0"], "--hidden"),
    (["bench_rigl_memory.py", "--sparsity", "1.5"], "--sparsity"),
    (["torch_conv_twin.py", "no/such/run"], "summary.json"),
    (["bench_threads.py", "--repeats", "0"], "--repeats"), (["same_bits.py", "no/such/tree", "."], "not a checkout"),
    (["same_bits.py", "."], "TREE"), (["bench_weight_gradient.py", "--repeats", "0"], "--repeats"),
    (["bench_col2im.py", "--batch", "0"], "--batch"), (["bench_transpose.py", "--repeats", "0"], "--repeats"),
])
def test_bad_benchmark_options_are_one_line(args, fragment):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", args[0]), *args[1:]], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env=dict(os.environ, TINYITOP_BACKEND="numpy"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], \
        result.stderr
