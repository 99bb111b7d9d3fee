"""Every output path an entry point writes, in every shape a user can give it: a folder that does not
exist yet, a folder, an existing file of the user's (with and without the expected extension), and a
path under a file. Each: the command works and writes where it says, or one `error:` line naming the
path; a user's file is never changed."""
import importlib.util
import json
import os

import numpy as np
import pytest

from fault_cases import tree_digest
from tinyitop import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["train", "--dataset", "synthetic", "--hidden", "8", "--limit-train", "64", "--epochs", "1",
         "--batch-size", "16", "--no-progress", "--no-plots"]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


# entry point -> (the output's expected extension or None for a folder, a function running it on `out`)
ENTRIES = {
    "train --out": (None, lambda tmp, out: cli.main(TRAIN + ["--out", out])),
    "sweep --root": (None, lambda tmp, out: cli.main(["sweep", str(tmp / "tiny.json"), "--root", out, "--status"])),
    "pack-images OUT": (".npz", lambda tmp, out: cli.main(["pack-images", str(tmp / "imgs"), out])),
    "subset_npz.py OUT": (".npz", lambda tmp, out: _script("subset_npz").main([str(tmp / "data.npz"), out, "--train",
                                                                              "4", "--test", "2"])),
    "accuracy_vs_rs.py OUT": (".png", lambda tmp, out: _script("accuracy_vs_rs").main([out, str(tmp / "done")])),
}
SHAPES = ["new/deeper/name", "a folder", "the user's file", "the user's file without extension", "under a file"]


@pytest.mark.parametrize("entry", list(ENTRIES))
@pytest.mark.parametrize("shape", SHAPES)
def test_every_output_path_shape_works_or_is_one_line_and_the_users_files_stay(tmp_path, capsys, entry, shape):
    extension, run = ENTRIES[entry]
    (tmp_path / "tiny.json").write_text(json.dumps({"name": "tiny", "reduced": {
        "base": {"dataset": "synthetic", "hidden": [8], "epochs": 1, "limit_train": 64}, "grid": {"seed": [0]}}}))
    _images(tmp_path / "imgs")
    _npz(tmp_path / "data.npz")
    if entry.startswith("accuracy"):
        _finished_run(tmp_path / "done")
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
    try:
        code = run(tmp_path, str(out))
    except SystemExit as stop:
        code = stop.code
    code = 0 if code is None else code                   # a script's main() that returns nothing: done
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
