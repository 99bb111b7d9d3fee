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
    (["bench_breakeven.py", "--plot", "/no/such/folder/x.png"], "does not exist"),
    (["bench_paths.py", "--models", "bogus"], "--models"), (["bench_paths.py", "--repeats", "0"], "--repeats"),
    (["bench_sparse.py", "--sections", "XYZ"], "--sections"),
    (["bench_layers.py", "--repeats", "-1"], "--repeats"), (["bench_rigl_memory.py", "--hidden", "0"], "--hidden"),
    (["bench_rigl_memory.py", "--sparsity", "1.5"], "--sparsity"),
    (["torch_conv_twin.py", "no/such/run"], "summary.json"),
    (["bench_threads.py", "--repeats", "0"], "--repeats"), (["same_bits.py", "no/such/tree", "."], "not a checkout"),
    (["same_bits.py", "."], "TREE"), (["bench_weight_gradient.py", "--repeats", "0"], "--repeats"),
    (["bench_col2im.py", "--batch", "0"], "--batch"), (["bench_transpose.py", "--repeats", "0"], "--repeats"),
    (["check_claims.py", "--rounds", "0"], "--rounds"), (["check_claims.py", "--doc", "no/such.md"], "not a file"),
    (["check_claims.py", "--doc", "README.md"], "no claims-table row"),
    (["bench_step.py", ".", "mlp:2:1"], "MODEL:SPARSITY:STEPS"), (["bench_step.py", "no/such", "mlp:0.9:1"], "not a checkout"),
    (["bench_sparse.py", "--width", "-1"], "--width"), (["bench_sparse.py", "--width", "nan"], "--width"),
    (["bench_launches.py", "--before", "no/such/tree"], "--before"),
    (["torch_conv_twin.py", "no/such/run", "--threads", "0"], "--threads"),
    (["torch_conv_twin.py", "no/such/run", "--torch-seed", "-1"], "--torch-seed"),
])
def test_bad_benchmark_options_are_one_line(args, fragment):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", args[0]), *args[1:]], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, env=dict(os.environ, TINYITOP_BACKEND="numpy"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], \
        result.stderr


def test_every_checked_claim_has_its_row_in_speed_md():
    """check_claims.py reads the documented figures from docs/SPEED.md's claims table: each claim it
    measures must have exactly one row there (the doc and the check cannot drift apart)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import check_claims
    rows = check_claims.documented(os.path.join(ROOT, "docs", "SPEED.md"))
    assert set(rows) == set(check_claims.CLAIMS)
    with open(os.path.join(ROOT, "docs", "SPEED.md"), encoding="utf-8") as f:
        text = f.read()
    assert all(text.count(f"| `{claim}` |") == 1 for claim in check_claims.CLAIMS)
