"""The option matrix of every benchmark, generated from each one's own parser: every option that takes
a value, at -1, 0, huge, nan, inf, a wrong type and empty (choices: one that is not). A benchmark
checks all of its options in `parse(argv)` before it times anything, so the matrix calls `parse`
alone: each case is accepted (the benchmark would run) or one `error:` line naming the option, exit
status 2, no traceback. A benchmark is a script under benchmarks/ with a `__main__` block; one
without `parse` fails here, so a new benchmark is covered without anyone listing it."""
import glob
import json
import os
import subprocess
import sys

import pytest

from fault_cases import assert_one_line_naming
from tinyitop import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAD = ["-1", "0", "1e300", "99999999999999999999", "nan", "inf", "abc", ""]
NOT_RUN_ALONE = {"bench_options.py", "torch_reference.py"}     # helpers: no options, nothing to time

# Run in a fresh process per benchmark (each sets up its own imports and sys.path): catch the parser
# that parse() builds, then call parse() once per case; print [[option, value, exit status, stderr]].
DRIVER = r"""
import argparse, contextlib, importlib.util, io, json, sys
path, positionals, bad = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
sys.argv = [path]                                 # the benchmark's own name in its messages
sys.path.insert(0, path.rsplit("/", 1)[0])
spec = importlib.util.spec_from_file_location("benchmark_under_test", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
parsers, original = [], argparse.ArgumentParser.parse_args
def catch(self, args=None, namespace=None):
    parsers.append(self)
    return original(self, args, namespace)
argparse.ArgumentParser.parse_args = catch

def call(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            module.parse(argv)
            code = 0
        except SystemExit as stop:
            code = stop.code
    return code, err.getvalue()

valid = call(positionals)                         # also catches the parser
typed = [[a.option_strings[0], True] for a in parsers[0]._actions if a.option_strings and a.type is not None]
results = [["(valid positionals)", "", *valid, typed]]
for action in parsers[0]._actions:
    if action.option_strings and action.nargs != 0 and action.dest != "help":
        for value in (["not-a-choice"] if action.choices else bad):
            results.append([action.option_strings[0], value, *call(positionals + [action.option_strings[0], value])])
print(json.dumps(results))
"""


def _benchmarks():
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "benchmarks", "*.py")))
    return [n for n in names if n not in NOT_RUN_ALONE]


@pytest.fixture(scope="module")
def twin_run(tmp_path_factory):
    """A finished VGG-16 run (torch_conv_twin.py's positional argument), tiny."""
    out = tmp_path_factory.mktemp("twin") / "vgg"
    assert cli.main(["train", "--model", "vgg16", "--width", "0.0625", "--dataset", "synthetic", "--limit-train", "32",
                     "--epochs", "1", "--batch-size", "16", "--method", "static", "--sparsity", "0.9",
                     "--no-progress", "--no-plots", "--out", str(out)]) == 0
    return str(out)


def _positionals(name, twin_run):
    return {"same_bits.py": [ROOT, ROOT], "bench_step.py": [ROOT, "mlp:0.9:1"],
            "torch_conv_twin.py": [twin_run]}.get(name, [])


@pytest.mark.parametrize("name", _benchmarks())
def test_every_benchmark_option_at_every_bad_value_is_one_line_or_accepted(name, twin_run):
    path = os.path.join(ROOT, "benchmarks", name)
    with open(path, encoding="utf-8") as f:
        assert "\ndef parse(argv=None):" in f.read(), f"{name} must check its options in parse(argv) before timing"
    positionals = _positionals(name, twin_run if name == "torch_conv_twin.py" else None)
    done = subprocess.run([sys.executable, "-c", DRIVER, path, json.dumps(positionals), json.dumps(BAD)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, TINYITOP_BACKEND="numpy"))
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert results[0][2] == 0, f"{name} refuses its valid call: {results[0][3]}"
    numeric = {option for option, typed in results[0][4]}
    failures = []
    for option, value, code, err in results[1:]:
        code = 0 if code is None else code
        try:
            assert_one_line_naming(code, err, option)
            # A benchmark's numbers are all bounded, and none below 0 (bench_options' types): each bad
            # value but 0 (a seed) is refused, so a raw type=float, or a check removed from a type, fails here.
            assert code == 2 or option not in numeric or value == "0", "accepted by a numeric option"
        except AssertionError as failure:
            failures.append(f"{option} {value!r}: {failure}")
    assert not failures, "\n".join(failures)
