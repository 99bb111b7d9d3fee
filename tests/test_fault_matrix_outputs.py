"""Every output path an entry point writes, in every shape a user can give it: a folder that does not
exist yet, a folder, an existing file of the user's (with and without the expected extension), and a
path under a file. Each: the command works and writes where it says, or one `error:` line naming the
path; a user's file is never changed."""
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from fault_cases import load_script, tree_digest
from tinyitop import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["train", "--dataset", "synthetic", "--hidden", "8", "--limit-train", "64", "--epochs", "1",
         "--batch-size", "16", "--no-progress", "--no-plots"]


def _npz(path):
    rng = np.random.default_rng(0)
    np.savez(path, train_x=rng.integers(0, 255, (40, 1, 4, 4), dtype=np.uint8), train_y=np.arange(40) % 2,
             test_x=rng.integers(0, 255, (10, 1, 4, 4), dtype=np.uint8), test_y=np.arange(10) % 2)


def _images(folder):
    import matplotlib.image
    for split in ("train", "test"):
        for label in ("a", "b"):
            os.makedirs(folder / split / label)
            matplotlib.image.imsave(folder / split / label / "0.png", np.zeros((4, 4, 3), np.uint8))


def _finished_run(folder):
    assert cli.main(TRAIN + ["--out", str(folder)]) == 0


# entry point -> (the output's expected extension or None for a folder, its arguments given `out`): the
# arguments follow `python -m tinyitop` or the script's path
ENTRIES = {
    "train --out": (None, lambda tmp, out: ["-m", "tinyitop", *TRAIN, "--out", out]),
    "sweep --root": (None, lambda tmp, out: ["-m", "tinyitop", "sweep", str(tmp / "tiny.json"), "--root", out, "--status"]),
    "pack-images OUT": (".npz", lambda tmp, out: ["-m", "tinyitop", "pack-images", str(tmp / "imgs"), out]),
    "subset_npz.py OUT": (".npz", lambda tmp, out: ["experiments/subset_npz.py", str(tmp / "data.npz"), out, "--train",
                                                   "4", "--test", "2"]),
    "accuracy_vs_rs.py OUT": (".png", lambda tmp, out: ["experiments/accuracy_vs_rs.py", out, str(tmp / "done")]),
    "bench_breakeven.py --plot": (".png", lambda tmp, out: ["benchmarks/bench_breakeven.py", "--replot", os.path.join(
        ROOT, "docs", "results", "speed", "breakeven_cpu.txt"), "--plot", out]),
    "demo --out": (None, lambda tmp, out: ["demos/mlp_cifar10.py", "--quick", "--dataset", "synthetic", "--no-progress",
                                           "--out", out]),
}
# Where each entry's output argument is declared: a new one in the code, not in ENTRIES, fails below.
DECLARED = {"train --out": ("tinyitop/cli.py", "--out"), "demo --out": ("tinyitop/cli.py", "--out"),
            "sweep --root": ("tinyitop/cli.py", "--root"), "pack-images OUT": ("tinyitop/cli.py", "out"),
            "subset_npz.py OUT": ("experiments/subset_npz.py", "out"),
            "accuracy_vs_rs.py OUT": ("experiments/accuracy_vs_rs.py", "out"),
            "bench_breakeven.py --plot": ("benchmarks/bench_breakeven.py", "--plot")}
SHAPES = ["new/deeper/name", "a folder", "the user's file", "the user's file without extension", "under a file"]


def _run_here(args):
    """Exit status of `python ARGS`, run in this process (a script's main() returning nothing: 0)."""
    sys.path.insert(0, os.path.join(ROOT, os.path.dirname(args[0])))     # a script's own imports, as when run
    try:
        code = cli.main(args[2:]) if args[:2] == ["-m", "tinyitop"] else load_script(args[0]).main(args[1:])
    except SystemExit as stop:
        code = stop.code
    finally:
        del sys.path[0]
    return 0 if code is None else code


def _inputs(tmp_path, entry):
    (tmp_path / "tiny.json").write_text(json.dumps({"name": "tiny", "reduced": {
        "base": {"dataset": "synthetic", "hidden": [8], "epochs": 1, "limit_train": 64}, "grid": {"seed": [0]}}}))
    _images(tmp_path / "imgs")
    _npz(tmp_path / "data.npz")
    if entry.startswith("accuracy"):
        _finished_run(tmp_path / "done")


@pytest.mark.parametrize("entry", list(ENTRIES))
@pytest.mark.parametrize("shape", SHAPES)
def test_every_output_path_shape_works_or_is_one_line_and_the_users_files_stay(tmp_path, capsys, entry, shape):
    extension, arguments = ENTRIES[entry]
    _inputs(tmp_path, entry)
    user = tmp_path / "user"
    user.mkdir()
    (user / "afile").write_text("the user's own")
    (user / ("mine" + (extension or ""))).write_text("the user's own")
    (user / "mine").write_text("the user's own, no extension")
    (user / "a folder").mkdir()
    out = {"new/deeper/name": user / "new" / "deeper" / ("name" + (extension or "")), "a folder": user / "a folder",
           "the user's file": user / ("mine" + (extension or "")), "the user's file without extension": user / "mine",
           "under a file": user / "afile" / ("x" + (extension or ""))}[shape]
    before = tree_digest(user)
    capsys.readouterr()
    code = _run_here(arguments(tmp_path, str(out)))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("warning", "note"))]
    if code == 2 and lines and "nothing to gather" in lines[-1]:
        code = 0                                         # a sweep never run: its --root was accepted
    after = tree_digest(user)
    kept = {name: digest for name, digest in before.items()}
    assert all(after.get(name) == digest for name, digest in kept.items()), "a file of the user's changed"
    if code != 0:
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
        assert os.path.basename(str(out)) in lines[0] or str(out) in lines[0], f"the error does not name {out}: {lines[0]}"
        assert after == before, "a refused command left something behind"


def _as_a_user():
    """The prefix that runs a command the way a user's own account would: root's override of file
    permissions (CAP_DAC_OVERRIDE) dropped, so that a read-only folder is read-only to it. [] when this
    is not root; None when it is and setpriv cannot drop it."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--bounding-set=-dac_override"]
    try:
        with tempfile.TemporaryDirectory() as folder:
            os.chmod(folder, 0o555)
            done = subprocess.run([*prefix, sys.executable, "-c", "import os, sys; sys.exit(os.access(sys.argv[1], os.W_OK))",
                                   folder], capture_output=True)
            os.chmod(folder, 0o755)
    except OSError:                                      # no setpriv
        return None
    return prefix if done.returncode == 0 else None


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_an_output_path_in_a_read_only_folder_is_one_line_naming_it(tmp_path, entry):
    """Read-only: the folder the output goes in (or the output folder itself) cannot be written."""
    prefix = _as_a_user()
    if prefix is None:
        pytest.skip("runs as root and setpriv cannot drop root's override of file permissions")
    extension, arguments = ENTRIES[entry]
    _inputs(tmp_path, entry)
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "theirs.txt").write_text("the user's own")
    out = locked / ("name" + (extension or ""))
    os.chmod(locked, 0o555)
    try:
        before = tree_digest(locked)
        done = subprocess.run([*prefix, sys.executable, *arguments(tmp_path, str(out))], cwd=ROOT, capture_output=True,
                              text=True, timeout=300, env=dict(os.environ, TINYITOP_BACKEND="numpy"))
        after = tree_digest(locked)
    finally:
        os.chmod(locked, 0o755)
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith(("warning", "note"))]
    assert "Traceback" not in done.stderr
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (done.returncode, done.stderr)
    assert "name" in lines[0] or str(locked) in lines[0], f"the error does not name {out}: {lines[0]}"
    assert after == before


def test_every_output_argument_in_the_code_is_in_the_matrix():
    """An argument named like an output (out, root, plot, output, figure, save) in any parser of
    tinyitop, the demos, the experiments or the benchmarks is one of ENTRIES' (DECLARED says where)."""
    found = set()
    for folder in ("tinyitop", "demos", "experiments", "benchmarks"):
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if name.endswith(".py"):
                with open(os.path.join(ROOT, folder, name), encoding="utf-8") as f:
                    found |= {(f"{folder}/{name}", option) for option in re.findall(
                        r'(?:add_argument|\ba)\("((?:--)?(?:out|root|plot|output|figure|save)[a-z-]*)"', f.read())}
    assert found == set(DECLARED.values()) and set(DECLARED) == set(ENTRIES), (found, set(DECLARED.values()))
