"""The option matrix of the scripts users run beside the CLI (experiments/*.py, demos/one_update.py),
generated from each script's own parser: every option that takes a value, at -1, 0, huge, nan, a wrong
type and empty (choices: one that is not), on valid positional arguments. Each: the script works, or
one `error:` line naming the option, exit status 2, no traceback."""
import argparse
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fault_cases import assert_one_line_naming, load_script
from tinyitop import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BAD = ["-1", "0", "99999999999999999999", "nan", "abc", ""]


class _Parsed(Exception):
    pass


def _parser_of(call):
    """The parser that call() builds, caught as it parses (nothing after parsing runs)."""
    caught = {}
    original = argparse.ArgumentParser.parse_args

    def catch(self, args=None, namespace=None):
        caught["parser"] = self
        raise _Parsed
    argparse.ArgumentParser.parse_args = catch
    try:
        call()
    except _Parsed:
        pass
    finally:
        argparse.ArgumentParser.parse_args = original
    return caught["parser"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Valid positional inputs: a finished run, a sweep folder of two labelled groups, a data set."""
    tmp = tmp_path_factory.mktemp("scripts")
    base = ["train", "--dataset", "synthetic", "--hidden", "8", "--limit-train", "64", "--epochs", "2",
            "--batch-size", "16", "--no-progress", "--no-plots"]
    assert cli.main(base + ["--out", str(tmp / "run")]) == 0
    config = {"name": "pair", "reduced": {"base": {"dataset": "synthetic", "hidden": [8], "epochs": 1,
                                                   "limit_train": 64, "batch_size": 16},
                                          "variants": [{"label": "static", "method": "static"},
                                                       {"label": "set", "method": "set"}],
                                          "grid": {"seed": [0]}}}
    (tmp / "pair.json").write_text(json.dumps(config))
    assert cli.main(["sweep", str(tmp / "pair.json"), "--root", str(tmp / "sweeps"), "--workers", "1"]) == 0
    rng = np.random.default_rng(0)
    np.savez(tmp / "data.npz", train_x=rng.integers(0, 255, (40, 1, 4, 4), dtype=np.uint8),
             train_y=np.arange(40) % 2, test_x=rng.integers(0, 255, (10, 1, 4, 4), dtype=np.uint8),
             test_y=np.arange(10) % 2)
    return tmp


# script -> positional arguments (and required options) that make a valid call, given the inputs folder
SCRIPTS = {
    "experiments/subset_npz.py": lambda t, out: [str(t / "data.npz"), str(out / "sub.npz"), "--train", "4",
                                                 "--test", "2"],
    "experiments/accuracy_vs_rs.py": lambda t, out: [str(out / "fig.png"), str(t / "sweeps" / "pair")],
    "experiments/compare_methods.py": lambda t, out: [str(t / "sweeps" / "pair"), "--baseline", "static"],
    "experiments/reproduce_rows.py": lambda t, out: [str(t / "run"), "--epochs", "1"],
    "demos/one_update.py": lambda t, out: [],
}


def _cases():
    cases = []
    for script in SCRIPTS:
        module = load_script(script)
        for action in _parser_of(lambda: module.main([]))._actions:
            if action.option_strings and action.nargs != 0 and action.dest != "help":
                values = ["not-a-choice"] if action.choices else BAD
                cases += [(script, action.option_strings[0], value) for value in values]
    return cases


@pytest.mark.parametrize("script, option, value", _cases(), ids=[f"{s.split('/')[-1]}{o}={v[:8]}" for s, o, v in _cases()])
def test_every_script_option_at_every_bad_value_is_one_line_or_works(inputs, tmp_path, capsys, script, option, value):
    argv = SCRIPTS[script](inputs, tmp_path)
    if option in argv:                                   # a required option: replace its valid value
        at = argv.index(option)
        argv = argv[:at] + argv[at + 2:]
    try:
        code = load_script(script).main(argv + [option, value])
    except SystemExit as stop:
        code = stop.code
    code = 0 if code is None else code
    err = capsys.readouterr().err
    assert_one_line_naming(code, err, option)


# Settings a demo's cases run with besides --quick --dataset synthetic (a million neurons: 100 a layer)
DEMO_BASE = {"demos/million_neurons.py": ["--width", "100"]}


def _demo_cases():
    """(demo, option, value): demo_main's options (shared by every demo) once, on mlp_cifar10.py, and each
    demo's options of its own, every demo with a main() found in demos/ and its parser caught as it parses."""
    cases, shared = [], None
    demos = ["demos/mlp_cifar10.py"] + [f"demos/{n}" for n in sorted(os.listdir(os.path.join(ROOT, "demos")))
                                        if n.endswith(".py") and n != "mlp_cifar10.py"]
    for demo in demos:
        module = load_script(demo)
        if not hasattr(module, "PAPER"):                   # not a demo_main demo (one_update: above)
            continue
        actions = [a for a in _parser_of(lambda: module.main([]))._actions
                   if a.option_strings and a.nargs != 0 and a.dest != "help"]
        shared = shared or {a.option_strings[0] for a in actions}
        own = [a for a in actions if a.option_strings[0] not in shared] if demo != demos[0] else actions
        cases += [(demo, a.option_strings[0], v) for a in own for v in (["not-a-choice"] if a.choices else BAD)]
    return cases


@pytest.mark.parametrize("demo, option, value", _demo_cases(),
                         ids=[f"{d.split('/')[-1][:-3]}{o}={v[:8]}" for d, o, v in _demo_cases()])
def test_every_demo_option_at_every_bad_value_is_one_line_or_a_run(tmp_path, capsys, monkeypatch, demo, option, value):
    """python DEMO --quick --dataset synthetic OPTION VALUE: a run through its first epoch (then
    stopped), or one line naming the option."""
    from tinyitop import train as train_module

    class Started(Exception):
        pass

    def first_epoch_only(*args):
        raise Started
    monkeypatch.setattr(train_module, "_end_epoch", first_epoch_only)
    monkeypatch.chdir(tmp_path)
    base = ["--quick"] + ([] if option == "--dataset" else ["--dataset", "synthetic"])
    extra = DEMO_BASE.get(demo, [])
    base += [] if option in extra else extra
    try:
        code = load_script(demo).main(base + [option, value])
    except Started:
        code = 0
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert_one_line_naming(code, err, option)


def _every_script():
    """Every script a user runs from demos/ and experiments/ (found, not listed)."""
    return [f"{folder}/{name}" for folder in ("demos", "experiments")
            for name in sorted(os.listdir(os.path.join(ROOT, folder))) if name.endswith(".py")]


@pytest.mark.parametrize("script", _every_script())
def test_every_script_refuses_an_unknown_option_in_one_line(script):
    """An option no script has: one `error:` line naming it (or the arguments it lacks), exit status 2,
    nothing run (no usage block)."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, script), "--no-such-option", "1"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=dict(os.environ, TINYITOP_BACKEND="numpy"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "--no-such-option" in lines[0] or "arguments are required" in lines[0], lines[0]
    assert not done.stdout.strip(), done.stdout


def test_the_from_scratch_file_refuses_damaged_data_in_one_line(tmp_path):
    """Its data loading reads Debian's Fashion-MNIST files: truncated ones are one line, exit status 2."""
    fashion = tmp_path / "fashion-mnist"
    fashion.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        (fashion / name).write_bytes(gzip.compress(b"\0\0\x08\x01" + bytes(2000))[:40])     # truncated
    with open(os.path.join(ROOT, "demos", "itop_from_scratch.py"), encoding="utf-8") as f:
        source = f.read().replace('fashion="/usr/share/datasets/fashion-mnist"', f'fashion="{fashion}"')
    (tmp_path / "lesson.py").write_text(source)
    done = subprocess.run([sys.executable, str(tmp_path / "lesson.py")], capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: cannot read Fashion-MNIST"), done.stderr
