"""Fault injection: nothing the user has is lost, no two runs mix, every expected fault is one line.

Small synthetic runs (seconds each). Each test asserts the facts a user relies on (file still there,
second run refused, exit status, no traceback, resumed metrics equal to an uninterrupted run), not
whole messages.
"""
import errno
import gzip
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error

import numpy as np
import pytest

from tinyitop import data
from tinyitop.cli import main as cli_main
from tinyitop.metrics import TIMING_FIELDS, JsonLines, read_jsonl
from tinyitop.rundir import RunFolder
from tinyitop.train import Config, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(tmp_path, name="run", **overrides):
    settings = dict(dataset="synthetic", hidden=(16,), epochs=3, update_interval=5, lr=0.05, sparsity=0.8,
                    out=str(tmp_path / name), progress=False)
    settings.update(overrides)
    return Config(**settings)


def _train_args(out, *extra):
    return ["train", "--dataset", "synthetic", "--hidden", "16", "--epochs", "2", "--update-interval", "5",
            "--lr", "0.05", "--sparsity", "0.8", "--out", str(out), "--no-progress", "--no-plots", *extra]


def _cli(capsys, args):
    """Run the CLI in-process: (exit status, stderr lines)."""
    code = cli_main(args)
    err = capsys.readouterr().err.strip()
    return code, err.splitlines()


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]


def _python(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT, TINYITOP_BACKEND="numpy")
    return subprocess.Popen([sys.executable] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, **kwargs)


# ---- 1. a data file that fails its MD5 is moved aside, never deleted ---------------------------

def test_wrong_md5_file_is_kept_aside_and_the_error_says_where(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable (test)")
    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    name = "train-images-idx3-ubyte.gz"
    (folder / name).write_bytes(b"the user's own recompressed copy")
    with pytest.raises(data.DatasetError) as err:
        data.load("fashion-mnist", str(tmp_path))      # --data-dir wins over a system copy
    message = str(err.value)
    aside = folder / (name + ".bad-md5")
    assert aside.read_bytes() == b"the user's own recompressed copy"
    assert str(aside) in message and data.FASHION_FILES[name] in message and "\n" not in message


# ---- 2, 3. one writer per folder; a fresh run never mixes with an old one ----------------------

def test_a_second_run_on_a_busy_folder_stops_at_once(tmp_path, capsys):
    holder = RunFolder(str(tmp_path / "busy"))
    holder.open()
    try:
        code, err = _cli(capsys, _train_args(tmp_path / "busy"))
    finally:
        holder.close()
    assert code == 2 and len(err) == 1 and str(tmp_path / "busy") in err[0] and "another run" in err[0]
    assert not os.path.exists(tmp_path / "busy" / "metrics.jsonl")


def test_the_lock_goes_when_its_process_dies(tmp_path):
    out = tmp_path / "run"
    code = ("import sys, time; sys.path.insert(0, %r); from tinyitop.rundir import RunFolder; "
            "folder = RunFolder(%r); folder.open(); print('locked', flush=True); time.sleep(60)" % (ROOT, str(out)))
    process = _python(["-c", code])
    assert process.stdout.readline().strip() == "locked"
    with pytest.raises(ValueError, match="another run"):
        RunFolder(str(out)).open()
    process.kill()                                      # kill -9: no cleanup code runs
    process.wait()
    folder = RunFolder(str(out))
    folder.open()                                       # the OS released the lock
    folder.close()


def test_a_fresh_run_refuses_a_folder_with_a_run_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(_train_args(out)) == 0
    before = {n: (out / n).read_bytes() for n in ("metrics.jsonl", "summary.json", "checkpoint.npz")}
    code, err = _cli(capsys, _train_args(out, "--lr", "0.02"))
    assert code == 2 and len(err) == 1 and "--overwrite" in err[0] and "--resume" in err[0]
    assert {n: (out / n).read_bytes() for n in before} == before           # untouched
    assert cli_main(_train_args(out, "--lr", "0.02", "--overwrite", "--epochs", "1")) == 0
    rows = read_jsonl(str(out / "metrics.jsonl"))
    assert [r["epoch"] for r in rows] == [1] and rows[0]["lr"] == 0.02       # only the new run
    assert json.load(open(out / "summary.json"))["config"]["lr"] == 0.02


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_clean(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "init.npz").write_bytes(b"from the killed run")       # a dense run writes this first
    (out / "metrics.jsonl").write_text('{"epoch": 1, "iter')
    (out / ".tinyitop-run").write_text(json.dumps({"written": ["init.npz", "metrics.jsonl"]}))   # recorded first
    messages = []
    train(_config(tmp_path, method="dense", growth=None, sparsity=0.0, epochs=1, resume=True), log=messages.append)
    assert any("no checkpoint" in m for m in messages)
    assert [r["epoch"] for r in read_jsonl(str(out / "metrics.jsonl"))] == [1]
    assert (out / "init.npz").read_bytes() != b"from the killed run"


def test_lth_resumed_after_its_dense_twin_was_killed_before_a_checkpoint(tmp_path):
    (tmp_path / "run" / "dense").mkdir(parents=True)
    (tmp_path / "run" / "dense" / "init.npz").write_bytes(b"from the killed twin")
    (tmp_path / "run" / "dense" / ".tinyitop-run").write_text(json.dumps({"written": ["init.npz", "metrics.jsonl"]}))
    run = train(_config(tmp_path, method="lth", growth=None, epochs=1, resume=True), log=lambda *_: None)
    assert (tmp_path / "run" / "dense" / "summary.json").exists() and run.summary["epochs"] == 1


# ---- 4, 5, 6. torn log lines, changed settings, orphan temporary files -------------------------

class Killed(Exception):
    pass


def _killed_after(epoch):
    def crash(done):
        if done == epoch:
            raise Killed()
    return crash


def test_a_torn_last_log_line_is_dropped_on_resume(tmp_path):
    train(_config(tmp_path, "whole"), log=lambda *_: None)
    with pytest.raises(Killed):
        train(_config(tmp_path), log=lambda *_: None, on_epoch_end=_killed_after(2))
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "iteration": 9')                          # a crash mid-write
    with open(tmp_path / "run" / "updates.jsonl", "a") as f:
        f.write('{"iteration": 1')
    messages = []
    train(_config(tmp_path, resume=True), log=messages.append)
    assert sum("torn last line" in m for m in messages) == 2
    for name in ("metrics.jsonl", "updates.jsonl"):
        assert _strip(read_jsonl(str(tmp_path / "run" / name))) == _strip(read_jsonl(str(tmp_path / "whole" / name)))


def test_a_bad_line_elsewhere_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not valid JSON"):
        JsonLines(str(path)).read(drop_torn_last=True)


@pytest.mark.parametrize("changed", [dict(momentum=0.5), dict(weight_decay=0.0), dict(pad_mode="zero"),
                                     dict(val_fraction=0.2)])
def test_resume_refuses_every_setting_that_changes_the_result(tmp_path, changed):
    train(_config(tmp_path, epochs=1), log=lambda *_: None)
    summary = (tmp_path / "run" / "summary.json").read_bytes()
    with pytest.raises(ValueError, match=f"other settings: {next(iter(changed))}"):
        train(_config(tmp_path, epochs=1, resume=True, **changed), log=lambda *_: None)
    assert (tmp_path / "run" / "summary.json").read_bytes() == summary


def test_orphan_temporary_files_are_removed_on_the_next_start(tmp_path):
    with pytest.raises(Killed):
        train(_config(tmp_path), log=lambda *_: None, on_epoch_end=_killed_after(1))
    orphans = (".checkpoint.npz.tinyitop-partial-4242", ".metrics.jsonl.tinyitop-partial-17",
               ".summary.json.tinyitop-partial-9")
    for orphan in orphans:
        (tmp_path / "run" / orphan).write_bytes(b"half")
    users = ("notes.tmpl", "thesis.tmp", "notes.tmp", "data.tmp123", "checkpoint.npz.tmp4242",
             ".notes.txt.tinyitop-partial-5")                              # not ours: they stay
    for name in users:
        (tmp_path / "run" / name).write_text("the user's")
    train(_config(tmp_path, resume=True), log=lambda *_: None)
    left = set(os.listdir(tmp_path / "run"))
    assert not left & set(orphans) and set(users) <= left


def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_temporary_file(tmp_path, capsys, monkeypatch):
    from tinyitop import checkpoint

    def full(f, **arrays):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint.np, "savez", full)
    code, err = _cli(capsys, _train_args(tmp_path / "run"))
    assert code == 2 and len(err) == 1 and "No space left on device" in err[0]
    assert not [n for n in os.listdir(tmp_path / "run") if "tinyitop-partial" in n]


def test_overwrite_removes_only_what_a_run_wrote(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(_train_args(out)) == 0
    (out / "dense").mkdir()                                                  # the user's, not LTH's twin
    (out / "dense" / "notes.txt").write_text("mine")
    (out / "thesis.tmp").write_text("mine")
    assert cli_main(_train_args(out, "--overwrite", "--epochs", "1")) == 0
    assert (out / "dense" / "notes.txt").read_text() == "mine" and (out / "thesis.tmp").read_text() == "mine"
    assert [r["epoch"] for r in read_jsonl(str(out / "metrics.jsonl"))] == [1]


def test_a_users_file_that_a_run_would_replace_is_refused_not_overwritten(tmp_path, capsys):
    out = tmp_path / "figures"
    out.mkdir()
    (out / "training.png").write_bytes(b"the user's own figure")
    code, err = _cli(capsys, _train_args(out, "--overwrite"))
    assert code == 2 and len(err) == 1 and "training.png" in err[0] and "no record of writing" in err[0]
    assert (out / "training.png").read_bytes() == b"the user's own figure"


def test_resume_never_wipes_a_finished_run_whose_checkpoint_was_removed(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(_train_args(out)) == 0
    os.remove(out / "checkpoint.npz")
    before = {n: (out / n).read_bytes() for n in ("metrics.jsonl", "summary.json")}
    code, err = _cli(capsys, _train_args(out, "--resume", "--epochs", "30"))
    assert code == 2 and len(err) == 1 and "finished run" in err[0] and "--overwrite" in err[0]
    assert {n: (out / n).read_bytes() for n in before} == before


def test_sigterm_stops_a_run_like_ctrl_c_and_a_closed_stdout_does_not_kill_it(tmp_path):
    args = ["-m", "tinyitop", "train", "--dataset", "synthetic", "--hidden", "16", "--epochs", "200",
            "--out", str(tmp_path / "run"), "--no-progress", "--no-plots"]
    process = _python(args)
    metrics = tmp_path / "run" / "metrics.jsonl"         # two epochs logged: the first checkpoint is on record
    _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err and err.strip().endswith("--resume")
    piped = subprocess.run(f"{shlex.quote(sys.executable)} -m tinyitop train --dataset synthetic --hidden 16 "
                           f"--epochs 3 --out {shlex.quote(str(tmp_path / 'piped'))} --no-progress --no-plots | head -1",
                           shell=True, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": ROOT}, executable="/bin/bash")
    assert piped.stdout.count("\n") == 1 and "Traceback" not in piped.stderr and "Broken pipe" not in piped.stderr
    assert json.load(open(tmp_path / "piped" / "summary.json"))["epochs"] == 3          # it ran to the end


# ---- 7, 8. Ctrl-C ------------------------------------------------------------------------------

def _wait_for(predicate, timeout=120):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_ctrl_c_during_train_stops_cleanly_and_resume_equals_uninterrupted(tmp_path):
    args = ["-m", "tinyitop"] + _train_args(tmp_path / "run", "--epochs", "40", "--limit-train", "1500")
    uninterrupted = _python(["-m", "tinyitop"] + _train_args(tmp_path / "whole", "--epochs", "40", "--limit-train", "1500"))
    process = _python(args)
    metrics = tmp_path / "run" / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "run" / "checkpoint.npz") in lines[0]
    assert lines[0].endswith("--resume") and "continue with: python -m tinyitop train" in lines[0]
    assert uninterrupted.wait(timeout=300) == 0
    resumed = _python(args + ["--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert _strip(read_jsonl(str(metrics))) == _strip(read_jsonl(str(tmp_path / "whole" / "metrics.jsonl")))


def _sweep_spec(tmp_path, runs=3, epochs=30, **base):
    spec = {"name": "tiny",
            "reduced": {"base": {"dataset": "synthetic", "hidden": [16], "epochs": epochs, "lr": 0.05,
                                 "sparsity": 0.8, "update_interval": 5, **base},
                        "grid": {"seed": list(range(runs))}},
            "full": {"base": {"dataset": "synthetic"}, "grid": {"seed": [0]}}}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    return str(path)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_a_sweep_and_its_workers(tmp_path, stop):
    config = _sweep_spec(tmp_path, runs=3, epochs=200)
    root = tmp_path / "runs"
    process = _python(["-m", "tinyitop", "sweep", config, "--root", str(root), "--workers", "1"])
    # Interrupt only once the first checkpoint is written (atomically, after the epoch's metrics
    # line): waiting for metrics.jsonl alone let Ctrl-C land before it, 1 run in 4 under load.
    first_checkpoint = root / "tiny" / "seed=0" / "checkpoint.npz"
    _wait_for(lambda: first_checkpoint.exists())
    process.send_signal(stop)
    out, err = process.communicate(timeout=90)
    assert process.returncode == 130 and "Traceback" not in err
    assert "Continue with: python -m tinyitop sweep" in err
    assert not (root / "tiny" / "seed=1").exists() and not (root / "tiny" / "seed=2").exists()   # none started
    assert first_checkpoint.exists()                                           # the worker kept its checkpoint
    time.sleep(0.5)
    pids = subprocess.run(["pgrep", "-f", str(root)], capture_output=True, text=True).stdout.split()
    assert not pids                                                            # no worker left running


def test_a_sweep_with_failed_runs_exits_non_zero_and_marks_them(tmp_path, capsys):
    config = json.loads(open(_sweep_spec(tmp_path, runs=1, epochs=1)).read())
    missing = str(tmp_path / "gone.npz")                             # valid options; the run fails at load
    config["reduced"]["grid"]["dataset"] = ["synthetic", missing]
    config["plot"] = {"x": "dataset"}
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(config))
    code, err = _cli(capsys, ["sweep", str(path), "--root", str(tmp_path / "runs"), "--workers", "1"])
    assert code == 2 and "1 of 2 runs failed" in err[-1] and "log.txt" in err[-1]
    results = (tmp_path / "runs" / "tiny" / "results.md").read_text()
    assert "failed run" in results and "gone.npz" in results
    assert (tmp_path / "runs" / "tiny" / "results.png").exists()


# ---- 10. expected faults: one line, exit 2 -----------------------------------------------------

@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", os.urandom(2000)],
                         ids=["empty", "truncated", "random-bytes"])
def test_a_damaged_checkpoint_on_resume_is_one_line(tmp_path, capsys, content):
    out = tmp_path / "run"
    assert cli_main(_train_args(out, "--epochs", "1")) == 0
    capsys.readouterr()
    (out / "checkpoint.npz").write_bytes(content)
    code, err = _cli(capsys, _train_args(out, "--epochs", "2", "--resume"))
    assert code == 2 and len(err) == 1 and "checkpoint.npz" in err[0] and "--overwrite" in err[0]
    assert "pickle" not in err[0]


@pytest.mark.parametrize("args, fragment", [
    (["--hidden", "0"], "layer sizes must be >= 1"), (["--hidden", "-5"], "layer sizes must be >= 1"),
    (["--hidden", "10,,20"], "comma-separated integers"), (["--dense-layers", "fc9"], "fc9"),
    (["--dense-layers", "fc1,fc2"], "no layer is left to be sparse"), (["--lr", "nan"], "finite"),
    (["--dataset", "mnist"], "PATH.npz"), (["--width", "0.5"], "an mlp's sizes are --hidden"),
    (["--width", "0"], "width must be a positive number"), (["--width", "nan"], "width must be a positive number"),
])
def test_bad_options_are_one_line(tmp_path, capsys, args, fragment):
    argv = _train_args(tmp_path / "run") + args
    if "--dense-layers" in args:
        argv[argv.index("--hidden") + 1] = "16"            # an MLP with layers fc1, fc2
    try:
        code = cli_main(argv)
    except SystemExit as exit_info:                         # argparse's own errors
        code = exit_info.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and fragment in err[0]
    assert len([line for line in err if line.strip()]) <= 2 and not any("Traceback" in line for line in err)


def test_out_that_is_a_file_or_not_writable_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    code, err = _cli(capsys, _train_args(tmp_path / "afile"))
    assert code == 2 and len(err) == 1 and "is a file" in err[0]

    def read_only(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", path)
    import tinyitop.rundir
    monkeypatch.setattr(tinyitop.rundir.os, "makedirs", read_only)
    code, err = _cli(capsys, _train_args(tmp_path / "readonly"))
    assert code == 2 and len(err) == 1 and "Permission denied" in err[0] and "writable" in err[0]


def test_a_flipped_byte_inside_a_gzip_idx_file(tmp_path):
    header = bytes([0, 0, 8, 1]) + (5000).to_bytes(4, "big")
    raw = bytearray(gzip.compress(header + np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()))
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "x.gz").write_bytes(bytes(raw))
    with pytest.raises(data.DatasetError, match="not a readable IDX file"):
        data.read_idx(str(tmp_path / "x.gz"))


@pytest.mark.parametrize("text, fragment", [
    ('{"name": "x", "reduced": {', "is not valid JSON"),
    ('{"name": "x", "reduced": {"base": {}}}', 'no "full" section'),
    ('{"name": "x", "reduced": {"base": []}, "full": {}}', '"reduced.base" must be a JSON object'),
    ('{"name": "x", "reduced": {"grid": {"seed": 1}}, "full": {}}', "non-empty list"),
    ('["not", "an", "object"]', "a sweep config is a JSON object"),
])
def test_malformed_sweep_configs_name_the_file(tmp_path, capsys, text, fragment):
    path = tmp_path / "bad.json"
    path.write_text(text)
    args = ["sweep", str(path), "--root", str(tmp_path / "runs")] + (["--full"] if "full" in fragment else [])
    code, err = _cli(capsys, args)
    assert code == 2 and len(err) == 1 and str(path) in err[0] and fragment in err[0]


def test_divergence_says_what_works(tmp_path):
    from tinyitop.train import TrainingDiverged
    with pytest.raises(TrainingDiverged) as first_epoch, np.errstate(all="ignore"):
        train(_config(tmp_path, lr=1e6, weight_decay=9e-7, method="dense", growth=None, sparsity=0.0, epochs=50), log=lambda *_: None)
    message = str(first_epoch.value)
    assert "no checkpoint was written yet" in message and "checkpoint.npz" not in message
    assert "--overwrite" in message and "--resume continues only the same settings" in message


# ---- 11. a Delta T that never comes ------------------------------------------------------------

def test_update_interval_beyond_the_run_warns_once(tmp_path):
    messages = []
    train(_config(tmp_path, update_interval=10_000, epochs=2), log=messages.append)
    warnings = [m for m in messages if "no topology update will happen" in m]
    assert len(warnings) == 1
    messages.clear()
    train(_config(tmp_path, "short", update_interval=5, epochs=2), log=messages.append)
    assert not [m for m in messages if "no topology update" in m]


def test_the_update_interval_hint_gives_the_updates_it_promises(tmp_path):
    import re
    messages = []
    train(_config(tmp_path, update_interval=10_000, epochs=2), log=messages.append)
    hint, promised = map(int, re.search(r"e\.g\. to (\d+) for (\d+) updates", " ".join(messages)).groups())
    train(_config(tmp_path, "hinted", update_interval=hint, epochs=2), log=lambda *_: None)
    assert len(read_jsonl(str(tmp_path / "hinted" / "updates.jsonl"))) == promised > 0


def test_lr_drops_that_share_an_epoch_are_said(tmp_path):
    messages = []
    train(_config(tmp_path, epochs=2), log=messages.append)            # int(2/2) == int(3*2/4) == 1
    assert any("fall on the same epoch: lr x0.01 from epoch 2" in m for m in messages)
    messages.clear()
    train(_config(tmp_path, "four", epochs=4), log=messages.append)    # epochs 2 and 3: apart
    assert not any("same epoch" in m for m in messages)


# ---- resume refuses what changed: the data, and altered checkpoints ------------------------------

def _npz_data(path, seed, classes=10):
    rng = np.random.default_rng(seed)
    np.savez(path, train_x=rng.integers(0, 256, (200, 3, 8, 8), dtype=np.uint8), train_y=rng.integers(0, classes, 200),
             test_x=rng.integers(0, 256, (50, 3, 8, 8), dtype=np.uint8), test_y=rng.integers(0, classes, 50))


@pytest.mark.parametrize("classes", [10, 5])
def test_resume_refuses_data_that_changed_under_the_same_file_name(tmp_path, capsys, classes):
    data_file, out = tmp_path / "data.npz", tmp_path / "run"
    _npz_data(data_file, seed=0)
    args = ["train", "--dataset", str(data_file), "--hidden", "16", "--epochs", "3", "--out", str(out),
            "--no-progress", "--no-plots"]
    with pytest.raises(Killed):
        train(config_from_args_for(args), log=lambda *_: None, on_epoch_end=_killed_after(1))
    _npz_data(data_file, seed=1, classes=classes)                   # replaced by other data
    code, err = _cli(capsys, args + ["--resume"])
    assert code == 2 and len(err) == 1 and "is not the one" in err[0] and "content hash" in err[0]


def config_from_args_for(args):
    from tinyitop.cli import add_train_arguments, config_from_args
    from tinyitop.options import Parser
    parser = Parser()
    add_train_arguments(parser)
    return config_from_args(parser.parse_args(args[1:]))


def _alter_checkpoint(path, change):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    change(arrays)
    np.savez(path, **arrays)


def _set_meta(arrays, edit):
    meta = json.loads(str(arrays["meta"]))
    edit(meta)
    arrays["meta"] = np.array(json.dumps(meta))


ALTERATIONS = {
    "explored set cut short": lambda a: a.update({"explored/fc1/positions": a["explored/fc1/positions"][:5]}),
    "duplicate positions": lambda a: a.update({"sparse/fc1.weight/positions":
                                               np.repeat(a["sparse/fc1.weight/positions"][:1], a["sparse/fc1.weight/positions"].size)}),
    "out-of-range positions": lambda a: a.update({"sparse/fc1.weight/positions": a["sparse/fc1.weight/positions"] + 10 ** 9}),
    "epoch -5": lambda a: _set_meta(a, lambda m: m["state"].update(epoch=-5)),
    "meta without state": lambda a: _set_meta(a, lambda m: m.pop("state")),
    "meta without config": lambda a: _set_meta(a, lambda m: m.pop("config")),
}


@pytest.mark.parametrize("alteration", sorted(ALTERATIONS))
def test_an_altered_checkpoint_is_refused_in_one_line(tmp_path, capsys, alteration):
    out = tmp_path / "run"
    assert cli_main(_train_args(out)) == 0
    _alter_checkpoint(out / "checkpoint.npz", ALTERATIONS[alteration])
    code, err = _cli(capsys, _train_args(out, "--resume", "--epochs", "3"))
    assert code == 2 and len(err) == 1 and "checkpoint.npz" in err[0] and "--overwrite" in err[0], err


def _bad_npz(path, **changes):
    rng = np.random.default_rng(0)
    arrays = dict(train_x=rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8), train_y=np.arange(20) % 10,
                  test_x=rng.integers(0, 256, (10, 3, 8, 8), dtype=np.uint8), test_y=rng.integers(0, 10, 10))
    arrays.update(changes)
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("case, extra, message", [
    ("huge hidden layer", ["--hidden", "2000000000"], "GiB"),
    ("huge layer, dense at first", ["--hidden", "2000000000", "--method", "gmp"], "GiB"),
    ("negative stop epoch", ["--stop-exploration-epoch", "-3"], "stop_exploration_epoch must be >= 0"),
    ("dense with a sparsity", ["--method", "dense"], "--method dense trains every weight"),   # _train_args: --sparsity 0.8
    ("val fraction leaves nothing", "val", "training images to train on"),
    ("labels as ids", "ids", "no 'classes' array"),
    ("nan statistics", "nan", "finite values"),
])
def test_bad_input_is_one_error_line_before_any_work(tmp_path, capsys, case, extra, message):
    if extra == "val":
        extra = ["--dataset", _bad_npz(tmp_path / "small.npz"), "--val-fraction", "0.97"]
    elif extra == "ids":
        extra = ["--dataset", _bad_npz(tmp_path / "ids.npz", train_y=np.arange(20) * 5_000_000)]
    elif extra == "nan":
        extra = ["--dataset", _bad_npz(tmp_path / "nan.npz", mean=np.array([np.nan, 0.5, 0.5]),
                                       std=np.array([0.2, np.inf, 0.2]))]
    started = time.time()
    code, err = _cli(capsys, _train_args(tmp_path / "run", *extra))
    assert code == 2 and message in " ".join(err) and err[0].startswith("error:"), err
    assert time.time() - started < 30                              # refused up front, not after a long wait


# ---- sweeps never report stale or false results -------------------------------------------------

def test_a_sweep_refuses_run_folders_trained_with_other_base_settings(tmp_path, capsys):
    config = _sweep_spec(tmp_path, runs=1, epochs=1)
    spec = json.loads(open(config).read())
    root = str(tmp_path / "runs")
    assert _cli(capsys, ["sweep", config, "--root", root, "--workers", "1"])[0] == 0
    spec["reduced"]["base"]["epochs"] = 2                                  # the base edited since
    open(config, "w").write(json.dumps(spec))
    code, err = _cli(capsys, ["sweep", config, "--root", root, "--workers", "1"])
    assert code == 2 and len(err) == 1 and "other settings" in err[0] and "epochs 1 -> 2" in err[0]


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["reduced"]["base"].update(epochs="2"), "run seed=0"),                    # a string, not a number
    (lambda s: s["reduced"]["base"].update(lr=[0.1]), "run seed=0"),
    (lambda s: s.update(plot={"x": "seed", "colour": "red"}), "\"plot\""),
    (lambda s: s.update(reduced={"base": s["reduced"]["base"], "grd": {"seed": [0]}}), "unknown keys ['grd']"),
    (lambda s: s.update(name="../outside"), "plain folder name"),
    (lambda s: s.update(extra=1), "unknown keys ['extra']"),
    (lambda s: s.update(plot={"x": "seed"}), "the seed is averaged over"),
    (lambda s: s.update(plot={"x": "lr"}), "plot \"x\" is 'lr'"),
])
def test_a_bad_sweep_config_is_refused_before_any_run(tmp_path, capsys, edit, message):
    path = _sweep_spec(tmp_path, runs=1, epochs=1)
    spec = json.loads(open(path).read())
    edit(spec)
    open(path, "w").write(json.dumps(spec))
    code, err = _cli(capsys, ["sweep", path, "--root", str(tmp_path / "runs"), "--workers", "1"])
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("metrics.jsonl"))
    assert not (tmp_path / "outside").exists()


def test_train_help_describes_every_option_with_its_default_once(capsys):
    import re
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    text = capsys.readouterr().out.split("options:")[1]
    options = [" ".join(o.split()) for o in re.split(r"\n  (?=--)", text)[1:]]
    assert len(options) >= 25
    for option in options:
        assert option.count("default:") == 1, option
