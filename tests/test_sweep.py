"""The sweep runner: grid expansion, command lines, skip finished, resume unfinished, aggregation."""
import json
import os
import shlex
import sys

import pytest

from tinyitop.cli import config_from_args
from tinyitop.metrics import read_jsonl
from tinyitop.sweep import run
from tinyitop.sweep_config import check_plot, check_runs, expand, load_config, train_command
from tinyitop.sweep_config import resolved as resolve_settings
from tinyitop.train import Config, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")


def _spec(tmp_path, **plot):
    spec = {"name": "tiny", "title": "tiny", "plot": plot or {"x": "update_interval", "series": None},
            "reduced": {"base": {"dataset": "synthetic", "hidden": [16], "epochs": 2, "lr": 0.05, "sparsity": 0.9,
                                 "method": "set"},
                        "grid": {"update_interval": [3, 9], "seed": [0, 1]}},
            "full": {"base": {"dataset": "synthetic"}, "grid": {"seed": [0]}}}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    return str(path)


def test_expand_crosses_variants_and_grid():
    preset = {"base": {"epochs": 3}, "grid": {"a": [1, 2], "seed": [0, 1, 2]},
              "variants": [{"label": "x"}, {"label": "y w/o z", "method": "static"}]}
    runs = expand(preset)
    assert len(runs) == 12 and len({run_id for run_id, _, _ in runs}) == 12
    assert runs[-1][0] == "y-w-o-z_a=2_seed=2" and runs[-1][2] == {"epochs": 3, "method": "static", "a": 2, "seed": 2}


def test_every_shipped_config_expands_to_valid_train_commands():
    import argparse
    from tinyitop.cli import add_train_arguments
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    for name in sorted(n for n in os.listdir(EXPERIMENTS) if n.endswith(".json")):
        for full in (False, True):
            spec, preset = load_config(os.path.join(EXPERIMENTS, name), full)
            check_runs(name, expand(preset))
            check_plot(name, spec.get("plot"), expand(preset))      # the figure's axes vary in the runs
            for run_id, _, settings in expand(preset):
                args = parser.parse_args(train_command(settings, "out")[4:])
                config = config_from_args(args)
                config.validate()                                   # every run is a valid experiment
                for key, value in resolve_settings(settings).items():
                    expected = tuple(value) if isinstance(value, list) else value
                    assert getattr(config, key) == expected, (name, run_id, key)


def test_unknown_settings_in_a_config_are_rejected(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"name": "bad", "reduced": {"base": {"learning_rate": 0.1}}, "full": {}}))
    with pytest.raises(ValueError, match="unknown settings"):
        load_config(str(path))


def test_sweep_runs_skips_resumes_and_aggregates(tmp_path, capsys):
    config_path = _spec(tmp_path)
    root = str(tmp_path / "runs")
    # One run killed after its first epoch: the sweep must resume it, not restart it.
    killed_dir = os.path.join(root, "tiny", "update_interval=3_seed=0")

    class Killed(Exception):
        pass

    def crash(epoch):
        raise Killed()
    with pytest.raises(Killed):
        train(Config(dataset="synthetic", hidden=(16,), epochs=2, lr=0.05, sparsity=0.9, update_interval=3,
                     seed=0, out=killed_dir, progress=False), log=lambda *a: None, on_epoch_end=crash)
    rows = run(config_path, root, workers=2)
    out = capsys.readouterr().out
    assert "4 runs, 0 already finished" in out and out.count(": ok in") == 4
    assert "resumed from" in open(os.path.join(killed_dir, "log.txt")).read()
    assert len(read_jsonl(os.path.join(killed_dir, "metrics.jsonl"))) == 2
    assert sorted(r["update_interval"] for r in rows) == ["3", "9"] and all(r["seeds"] == 2 for r in rows)
    assert all(r["final_rs_std"] is not None for r in rows)
    for name in ("results.csv", "results.md", "results.png", "curves.png"):
        assert os.path.exists(os.path.join(root, "tiny", name))
    run(config_path, root, workers=1)                          # everything finished: nothing runs
    assert "4 already finished" in capsys.readouterr().out


def test_variants_with_different_settings_aggregate(tmp_path):
    spec = json.loads(open(_spec(tmp_path)).read())
    spec["reduced"]["grid"] = {"seed": [0]}
    spec["reduced"]["variants"] = [{"label": "a"}, {"label": "b", "stop_exploration_epoch": 1}]
    spec["plot"] = {"x": "label"}
    path = tmp_path / "variants.json"
    path.write_text(json.dumps(spec))
    rows = run(str(path), str(tmp_path / "runs"), workers=1)
    assert [r["label"] for r in rows] == ["a", "b"] and rows[0]["stop_exploration_epoch"] == ""
    assert "| a |" in open(tmp_path / "runs" / "tiny" / "results.md").read()


def test_print_commands_for_a_scheduler(tmp_path, capsys):
    run(_spec(tmp_path), str(tmp_path / "runs"), print_commands=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    first = shlex.split(lines[0])
    train = first[first.index("python"):first.index(">>")]
    assert train[:4] == ["python", "-m", "tinyitop", "train"] and "--resume" in train
    assert train[train.index("--update-interval") + 1] == "3"
    out = train[train.index("--out") + 1]
    assert os.path.isabs(out) and first[first.index(">>") + 1] == os.path.join(out, "log.txt")
    assert {"OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1", "TINYITOP_THREADS=1"} <= set(first)
    import subprocess                                  # as GNU parallel runs it: a shell line, any folder
    done = subprocess.run(["bash", "-c", lines[0].replace("python -m", f"{sys.executable} -m", 1)],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0 and "best val acc" in open(os.path.join(out, "log.txt")).read()


def test_dataset_override_and_negated_flags_reach_the_train_commands(tmp_path, capsys):
    run(_spec(tmp_path), str(tmp_path / "runs"), print_commands=True, dataset="/data/my cifar.npz")
    first = shlex.split(capsys.readouterr().out.splitlines()[0])
    assert first[first.index("--dataset") + 1] == "/data/my cifar.npz"
    assert first[first.index("--out") + 1].startswith(str(tmp_path / "runs" / "tiny-my cifar"))
    assert "--no-augment" in train_command({"augment": False}, "out")
    assert "--augment" in train_command({"augment": True}, "out")
    assert not any("fan-in" in a for a in train_command({"fan_in_scaling": False}, "out"))


def test_width_reaches_the_train_command_and_old_runs_read_as_width_one():
    from tinyitop.config import changed_settings
    args = train_command({"model": "vgg16", "width": 0.25, "method": "dense"}, "out")
    assert args[args.index("--width") + 1] == "0.25"
    saved = Config(model="vgg16").to_json()
    del saved["width"]                                  # a run folder from before --width existed
    assert changed_settings(saved, Config(model="vgg16")) == []
    assert changed_settings(saved, Config(model="vgg16", width=0.5)) == [("width", 1.0, 0.5)]


@pytest.mark.parametrize("flag", ["--status", "--aggregate"])
def test_looking_at_a_sweep_never_run_creates_nothing(tmp_path, capsys, flag):
    """--status and --aggregate only read: on a root where the sweep never ran they say so in one
    line and leave no (empty) sweep folder behind."""
    from tinyitop.cli import main
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"name": "tiny", "reduced": {"base": {"dataset": "synthetic", "hidden": [8]},
                                                               "grid": {"seed": [0]}}}))
    assert main(["sweep", str(config), "--root", str(tmp_path / "runs"), flag]) == 2
    assert "nothing to gather" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_a_sweeps_results_never_replace_a_file_of_the_users(tmp_path, capsys):
    """results.md edited by the user after the sweep wrote it, or a results.csv of theirs where the sweep
    writes one: refused in one line before any training, the file kept; the sweep's own are rewritten."""
    from tinyitop.cli import main
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"name": "tiny", "reduced": {"base": {
        "dataset": "synthetic", "hidden": [8], "epochs": 1, "limit_train": 64, "batch_size": 16},
        "grid": {"seed": [0]}}}))
    root = tmp_path / "runs"
    sweep = ["sweep", str(config), "--root", str(root), "--workers", "1"]
    assert main(sweep) == 0 and main(sweep + ["--aggregate"]) == 0      # its own files: rewritten
    (root / "tiny" / "results.md").write_text("my notes on these results")
    capsys.readouterr()
    assert main(sweep) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "results.md" in err[0] and "changed since" in err[0]
    assert (root / "tiny" / "results.md").read_text() == "my notes on these results"
    (root / "tiny" / "results.md").unlink()
    (root / "tiny" / "results.csv").unlink()
    (root / "tiny" / "results.csv").write_text("mine")
    (root / "tiny" / ".tinyitop-run").unlink()                             # no record of writing it
    assert main(sweep + ["--aggregate"]) == 2 and (root / "tiny" / "results.csv").read_text() == "mine"


def test_two_processes_writing_a_sweeps_results_at_once_never_refuse_each_other(tmp_path, monkeypatch):
    """One aggregation has written results.md but not yet recorded it when a second, with other content,
    begins: the second waits for the first (results_lock), so it does not take that file for one the
    user changed."""
    import threading
    from tinyitop import sweep_results
    from tinyitop.cli import main
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"name": "tiny", "reduced": {"base": {
        "dataset": "synthetic", "hidden": [8], "epochs": 1, "limit_train": 64, "batch_size": 16},
        "grid": {"seed": [0]}}}))
    assert main(["sweep", str(config), "--root", str(tmp_path / "runs"), "--workers", "1"]) == 0
    spec, preset = load_config(str(config))
    folder = str(tmp_path / "runs" / "tiny")
    commands = [(run_id, label, settings, None) for run_id, label, settings in expand(preset)]
    written, record = threading.Event(), sweep_results.record_drawn

    def slow_record(*args):                       # the first writer pauses between writing and recording
        if not written.is_set():
            written.set()
            threading.Event().wait(1.0)
        record(*args)
    monkeypatch.setattr(sweep_results, "record_drawn", slow_record)
    outcomes = []

    def aggregate(failed):
        try:
            sweep_results.aggregate(spec, folder, commands, failed)
            outcomes.append("ok")
        except ValueError as err:
            outcomes.append(str(err))
    first = threading.Thread(target=aggregate, args=({"other_seed=1": "not started"},))
    first.start()
    assert written.wait(30)
    aggregate({})                                  # other content than the first's results.md
    first.join()
    assert outcomes == ["ok", "ok"], outcomes
