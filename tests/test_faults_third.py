"""The third fault hunt: a run deletes or replaces only what it wrote; a run stopped at any moment
resumes or restarts clean; silently wrong results are refused or correct."""
import json
import os

import numpy as np
import pytest

from fault_cases import summary_json
from tinyitop.cli import main as cli_main
from tinyitop.metrics import read_jsonl
from tinyitop.train import Config, train

MINE = b"the user's own file"


def _args(out, *extra):
    return ["train", "--dataset", "synthetic", "--hidden", "16", "--epochs", "2", "--update-interval", "5",
            "--lr", "0.05", "--sparsity", "0.8", "--out", str(out), "--no-progress", *extra]


def _cli(capsys, args):
    code = cli_main(args)
    return code, capsys.readouterr().err.strip().splitlines()


def _config(tmp_path, **overrides):
    settings = dict(dataset="synthetic", hidden=(16,), epochs=3, update_interval=5, lr=0.05, sparsity=0.8,
                    out=str(tmp_path / "run"), progress=False)
    return Config(**{**settings, **overrides})


# ---- data loss: a run deletes or replaces only files it wrote itself --------------------------------

@pytest.mark.parametrize("again", [["--overwrite"], ["--resume", "--epochs", "3"]])
def test_users_figure_and_report_saved_after_a_no_plots_run_survive(tmp_path, capsys, again):
    out = tmp_path / "run"
    assert cli_main(_args(out, "--no-plots")) == 0
    for name in ("training.png", "report.md"):
        (out / name).write_bytes(MINE)
    code, err = _cli(capsys, _args(out, *again))
    assert code == 2 and len(err) == 1 and "training.png" in err[0] and "move" in err[0]
    assert (out / "training.png").read_bytes() == MINE and (out / "report.md").read_bytes() == MINE


def test_without_its_manifest_a_run_deletes_only_what_its_content_shows_it_wrote(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(_args(out, "--no-plots")) == 0
    os.remove(out / ".tinyitop-run")
    (out / "training.png").write_bytes(MINE)
    code, err = _cli(capsys, _args(out, "--overwrite"))
    assert code == 2 and "training.png" in err[0] and (out / "training.png").read_bytes() == MINE
    os.remove(out / "training.png")                                 # the user moves it: now the logs,
    assert cli_main(_args(out, "--overwrite", "--no-plots")) == 0    # checkpoint and summary read as ours


def test_a_folder_holding_only_the_users_summary_is_not_a_run(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "summary.json").write_text('{"my": "results"}')
    code, err = _cli(capsys, _args(out, "--overwrite"))
    assert code == 2 and "summary.json" in err[0] and (out / "summary.json").read_text() == '{"my": "results"}'


def test_a_run_with_figures_is_replaced_whole_by_overwrite(tmp_path):
    out = tmp_path / "run"
    assert cli_main(_args(out)) == 0                                # figures drawn and recorded
    assert (out / "training.png").exists()
    written = json.loads((out / ".tinyitop-run").read_text())["written"]
    assert {"training.png", "checkpoint.npz", "metrics.jsonl", "summary.json"} <= set(written)
    assert "report.md" not in written and "init.npz" not in written     # only what it wrote
    assert cli_main(_args(out, "--overwrite", "--epochs", "1")) == 0
    assert [r["epoch"] for r in read_jsonl(str(out / "metrics.jsonl"))] == [1]


# ---- a run interrupted at any moment resumes or restarts clean --------------------------------------

def test_a_run_stopped_while_writing_its_first_checkpoint_restarts_clean(tmp_path, monkeypatch):
    from tinyitop import checkpoint

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint, "save", killed)                 # the row is logged, the checkpoint not
    with pytest.raises(Exception, match="before the first checkpoint"):
        train(_config(tmp_path), log=lambda *_: None)
    assert len(read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))) == 1
    monkeypatch.undo()
    messages = []
    run = train(_config(tmp_path, resume=True), log=messages.append)
    assert any("starting from scratch" in m for m in messages) and run.summary["epochs"] == 3
    assert [r["epoch"] for r in read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))] == [1, 2, 3]


def test_ctrl_c_before_the_first_checkpoint_says_how_to_start_again(tmp_path, capsys, monkeypatch):
    from tinyitop import checkpoint

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint, "save", killed)
    code = cli_main(_args(tmp_path / "run", "--no-plots"))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and len(err) == 1 and "start it again with:" in err[0] and "--resume" in err[0]


# ---- silently wrong results --------------------------------------------------------------------------

def test_gmp_reports_only_epochs_at_its_final_sparsity(tmp_path):
    run = train(_config(tmp_path, method="gmp", growth=None, epochs=5, sparsity=0.99, update_interval=1),
                log=lambda *_: None)
    rows = read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
    final = rows[-1]["nnz_per_layer"]
    assert rows[run.summary["best_epoch"] - 1]["nnz_per_layer"] == final           # the reported model's
    assert any(r["nnz_per_layer"] != final for r in rows)                           # earlier epochs were denser
    assert "final sparsity" in run.summary["best_epoch_chosen_among"]


def _kill_after(epoch):
    def crash(done):
        if done == epoch:
            raise KeyboardInterrupt
    return crash


def test_a_checkpoint_claiming_more_epochs_than_the_run_has_is_refused(tmp_path):
    with pytest.raises(Exception):
        train(_config(tmp_path), log=lambda *_: None, on_epoch_end=_kill_after(1))
    path = tmp_path / "run" / "checkpoint.npz"
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(str(arrays["meta"]))
    meta["state"]["epoch"], meta["state"]["step"] = 1000, 1000 * meta["state"]["step"]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="after epoch 1000"):
        train(_config(tmp_path, resume=True), log=lambda *_: None)


def test_a_log_that_lost_an_epoch_the_checkpoint_holds_is_refused(tmp_path):
    with pytest.raises(Exception):
        train(_config(tmp_path), log=lambda *_: None, on_epoch_end=_kill_after(2))
    path = tmp_path / "run" / "metrics.jsonl"
    lines = path.read_text().splitlines(True)
    path.write_text(lines[0] + lines[1][:30])                      # epoch 2's row damaged
    with pytest.raises(ValueError, match=r"holds epochs 1 but .* after epoch 2"):
        train(_config(tmp_path, resume=True), log=lambda *_: None)


def _spec(tmp_path, **preset):
    spec = {"name": "dup", "reduced": {"base": {"dataset": "synthetic", "hidden": [16], "epochs": 1,
                                                 "sparsity": 0.8, "update_interval": 5}, **preset}}
    path = tmp_path / "dup.json"
    path.write_text(json.dumps(spec))
    return str(path)


@pytest.mark.parametrize("preset", [{"grid": {"seed": [0, 0]}},
                                    {"variants": [{"label": "a", "lr": 0.1}, {"label": "a", "lr": 0.2}]}])
def test_sweep_runs_that_would_share_a_folder_are_refused(tmp_path, capsys, preset):
    code, err = _cli(capsys, ["sweep", _spec(tmp_path, **preset), "--root", str(tmp_path / "runs")])
    assert code == 2 and len(err) == 1 and "would be shared" in err[0]
    assert not (tmp_path / "runs").exists()


def test_aggregate_with_unfinished_runs_fails_and_names_them(tmp_path, capsys):
    spec = _spec(tmp_path, grid={"seed": [0, 1]})
    run = train(Config(dataset="synthetic", hidden=(16,), epochs=1, sparsity=0.8, update_interval=5, seed=0,
                       out=str(tmp_path / "runs" / "dup" / "seed=0"), progress=False), log=lambda *_: None)
    assert run.summary
    code, err = _cli(capsys, ["sweep", spec, "--root", str(tmp_path / "runs"), "--aggregate"])
    assert code == 2 and "1 of 2 runs have not finished" in err[-1] and "seed=1" in err[-1]
    assert "seed=1" in (tmp_path / "runs" / "dup" / "results.md").read_text()


@pytest.mark.parametrize("args, fragment", [(["--workers", "-3"], "--workers must be between 1 and 256")])
def test_bad_sweep_options_are_one_line(tmp_path, capsys, args, fragment):
    code, err = _cli(capsys, ["sweep", _spec(tmp_path, grid={"seed": [0]}), "--root", str(tmp_path / "r"), *args])
    assert code == 2 and len(err) == 1 and fragment in err[0]


def test_an_empty_plot_y_list_is_refused_before_any_run(tmp_path, capsys):
    path = _spec(tmp_path, grid={"lr": [0.1, 0.2]})
    spec = json.loads(open(path).read())
    spec["plot"] = {"x": "lr", "y": []}
    open(path, "w").write(json.dumps(spec))
    code, err = _cli(capsys, ["sweep", path, "--root", str(tmp_path / "runs")])
    assert code == 2 and 'plot "y"' in err[0] and not (tmp_path / "runs").exists()


def test_sweep_workers_stop_when_the_sweep_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = {"name": "orphans", "reduced": {"base": {"dataset": "synthetic", "hidden": [16], "epochs": 500,
                                                     "sparsity": 0.8, "update_interval": 5}, "grid": {"seed": [0]}}}
    (tmp_path / "o.json").write_text(json.dumps(spec))
    sweep = subprocess.Popen([sys.executable, "-m", "tinyitop", "sweep", str(tmp_path / "o.json"), "--root",
                              str(tmp_path / "runs"), "--workers", "1"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=root, TINYITOP_BACKEND="numpy"))
    lock = tmp_path / "runs" / "orphans" / "seed=0" / ".lock"
    deadline = time.time() + 120
    while not (lock.exists() and lock.read_text().strip()) and time.time() < deadline:
        time.sleep(0.2)
    worker = int(lock.read_text())                                 # the training run writes its PID there
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the sweep's worker kept training after the sweep was killed")


# ---- files tinyitop reads: one line that names the file and says what to do ---------------------------

def _npz(path, **arrays):
    rng = np.random.default_rng(0)
    base = dict(train_x=rng.integers(0, 256, (12, 3, 8, 8), dtype=np.uint8), train_y=np.arange(12) % 2,
                test_x=rng.integers(0, 256, (6, 3, 8, 8), dtype=np.uint8), test_y=np.arange(6) % 2)
    np.savez(path, **{**base, **arrays})
    return str(path)


@pytest.mark.parametrize("given", ["mean", "std"])
def test_npz_with_mean_or_std_alone_is_refused_not_half_ignored(tmp_path, given):
    from tinyitop import data
    path = _npz(tmp_path / "half.npz", **{given: np.array([0.5, 0.5, 0.5])})
    with pytest.raises(data.DatasetError, match=f"has {given} but no") as err:
        data.load(path)
    assert path in str(err.value)


def test_a_folder_given_as_npz_says_it_is_a_folder(tmp_path):
    from tinyitop import data
    (tmp_path / "images.npz").mkdir()
    with pytest.raises(data.DatasetError, match="is a folder, not an .npz file"):
        data.load(str(tmp_path / "images.npz"))


def test_pack_images_refuses_colour_statistics_for_grey_images(tmp_path, capsys):
    from PIL import Image
    for split in ("train", "test"):
        for name in ("a", "b"):
            folder = tmp_path / "grey" / split / name
            folder.mkdir(parents=True)
            Image.fromarray(np.full((6, 6), 100, np.uint8), mode="L").save(folder / "0.png")
    code = cli_main(["pack-images", str(tmp_path / "grey"), str(tmp_path / "g.npz"), "--normalise-as", "cifar10"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]   # not the bars
    assert code == 2 and len(err) == 1 and "3 channels" in err[0] and "have 1" in err[0]
    assert not (tmp_path / "g.npz").exists()


@pytest.mark.parametrize("command, env", [
    (["-m", "tinyitop", "train", "--help"], {"TINYITOP_THREADS": "two"}),
    ([os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demos", "mlp_cifar10.py"), "--quick", "--dataset", "synthetic"], {"TINYITOP_THREADS": "0"}),
    ([os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demos", "one_update.py")], {"TINYITOP_BACKEND": "bogus"}),
    ([os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demos", "one_update.py")], {"TINYITOP_THREADS": "-1"}),
])
def test_bad_environment_variables_are_one_line_before_any_work(tmp_path, command, env):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, *command], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": root, **env})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert next(iter(env)) in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("key, array", [("velocity/fc1.weight", np.zeros(5, np.float32)),
                                        ("param/fc1.bias", np.zeros((4, 4), np.float32)),
                                        ("buffer/fc1.bias", None)])
def test_a_checkpoint_array_of_the_wrong_shape_is_one_line_naming_it(tmp_path, capsys, key, array):
    out = tmp_path / "run"
    assert cli_main(_args(out, "--no-plots", "--epochs", "3", "--limit-train", "300")) == 0
    with np.load(out / "checkpoint.npz") as archive:
        arrays = {k: archive[k] for k in archive.files}
    if array is None:                                       # an MLP has no buffers: damage a velocity's dtype
        key, array = "velocity/fc2.bias", arrays["velocity/fc2.bias"].astype(np.float64)
    arrays[key] = array
    np.savez(out / "checkpoint.npz", **arrays)
    code, err = _cli(capsys, _args(out, "--no-plots", "--epochs", "3", "--limit-train", "300", "--resume"))
    assert code == 2 and len(err) == 1 and key in err[0] and "checkpoint.npz" in err[0]


def test_random_bytes_as_an_npz_do_not_pass_on_numpys_pickle_advice(tmp_path):
    from tinyitop import data
    (tmp_path / "noise.npz").write_bytes(np.random.default_rng(0).bytes(3000))
    with pytest.raises(data.DatasetError) as err:
        data.load(str(tmp_path / "noise.npz"))
    assert "pickle" not in str(err.value) and "noise.npz" in str(err.value)


@pytest.mark.parametrize("base, fragment", [({"epochs": "three"}, "epochs must be a whole number"),
                                            ({"epochs": None}, "epochs must be a whole number"),
                                            ({"hidden": 16}, "hidden must be a list"),
                                            ({"lr": True}, "lr must be a number"),
                                            ({"augment": "yes"}, "augment must be true or false")])
def test_sweep_settings_of_the_wrong_kind_name_the_file_and_setting(tmp_path, capsys, base, fragment):
    spec = {"name": "kinds", "reduced": {"base": {"dataset": "synthetic", **base}, "grid": {"seed": [0]}}}
    (tmp_path / "k.json").write_text(json.dumps(spec))
    code, err = _cli(capsys, ["sweep", str(tmp_path / "k.json"), "--root", str(tmp_path / "runs")])
    assert code == 2 and len(err) == 1 and "k.json" in err[0] and fragment in err[0] and "; ;" not in err[0]


def test_a_sweep_config_that_is_not_utf8_is_one_line(tmp_path, capsys):
    (tmp_path / "latin.json").write_bytes(b'{"name": "caf\xe9", "reduced": {}}')
    code, err = _cli(capsys, ["sweep", str(tmp_path / "latin.json")])
    assert code == 2 and len(err) == 1 and "latin.json is not UTF-8" in err[0]


def test_a_dangling_symlink_as_out_is_named_as_one(tmp_path, capsys):
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    code, err = _cli(capsys, _args(tmp_path / "link", "--no-plots"))
    assert code == 2 and len(err) == 1 and "broken symbolic link" in err[0]


def test_the_memory_check_counts_the_process_address_space_limit(tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = (f"ulimit -v 900000; exec {sys.executable} {os.path.join(root, 'demos', 'million_neurons.py')} "
               f"--quick --no-progress --dataset synthetic --out {tmp_path / 'm'}")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=root, TINYITOP_BACKEND="numpy"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "ulimit -v" in lines[0] and "GiB" in lines[0], result.stderr


def test_a_negative_seed_is_one_line(tmp_path, capsys):
    code, err = _cli(capsys, _args(tmp_path / "run", "--seed", "-1"))
    assert code == 2 and len(err) == 1 and "seed must be >= 0" in err[0]


@pytest.mark.parametrize("name, fragment", [("missing.json", "does not exist"), (".", "is a folder")])
def test_a_sweep_config_that_is_missing_or_a_folder_is_named(tmp_path, capsys, name, fragment):
    code, err = _cli(capsys, ["sweep", str(tmp_path / name), "--root", str(tmp_path / "runs")])
    assert code == 2 and len(err) == 1 and fragment in err[0]


@pytest.mark.parametrize("args, fragment", [
    (["subset_npz.py", "{noise}", "{out}", "--train", "5", "--test", "5"], "not a readable .npz"),
    (["subset_npz.py", "{data}", "{out}", "--train", "0", "--test", "5"], "--train must be in"),
    (["subset_npz.py", "{data}", "{data}", "--train", "5", "--test", "5"], "exists"),
    (["subset_npz.py", "{data}", "{out}", "--train", "abc", "--test", "5"], "--train"),
    (["accuracy_vs_rs.py", "{out}.png", "{missing}"], "is not a folder"),
    (["subset_npz.py", "{data}", "{data_stem}", "--train", "5", "--test", "5"], "exists"),   # np.savez adds .npz
    (["accuracy_vs_rs.py", "{data_stem}", "{missing}"], "data.png exists"),            # matplotlib adds .png
    (["accuracy_vs_rs.py", "{tmp}", "{missing}"], "is a folder"),                      # a folder as OUT
    (["accuracy_vs_rs.py", "{out}.png", "{sweep}"], "summary.json has no 'best_epoch'"),
    (["subset_npz.py", "{unbalanced}", "{out}", "--train", "12", "--test", "2"], "class 1 has 4 train images"),
])
def test_the_experiment_scripts_check_their_inputs(tmp_path, args, fragment):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "noise.npz").write_bytes(np.random.default_rng(1).bytes(500))
    names = dict(noise=tmp_path / "noise.npz", out=tmp_path / "out.npz", data=_npz(tmp_path / "data.npz"),
                 missing=tmp_path / "missing", data_stem=tmp_path / "data",
                 unbalanced=_npz(tmp_path / "unbalanced.npz", train_y=np.array([0] * 8 + [1] * 4, dtype=np.uint8)))
    before = (tmp_path / "data.npz").read_bytes()
    (tmp_path / "data.png").write_bytes(MINE)
    (tmp_path / "sweep" / "run").mkdir(parents=True)
    (tmp_path / "sweep" / "run" / "summary.json").write_text('{"config": {"method": "set"}}')
    names.update(tmp=tmp_path, sweep=tmp_path / "sweep")
    result = subprocess.run([sys.executable, os.path.join(root, "experiments", args[0]),
                             *[a.format(**names) for a in args[1:]]], capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], \
        result.stderr
    assert not (tmp_path / "out.npz").exists() and (tmp_path / "data.npz").read_bytes() == before
    assert (tmp_path / "data.png").read_bytes() == MINE and not (tmp_path / "out.npz.png").exists()


def test_subset_npz_keeps_every_class_balanced(tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = _npz(tmp_path / "data.npz")                        # 12 train (6 per class), 6 test
    result = subprocess.run([sys.executable, os.path.join(root, "experiments", "subset_npz.py"), source,
                             str(tmp_path / "sub.npz"), "--train", "4", "--test", "2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "sub.npz") as sub, np.load(source) as full:
        assert np.bincount(sub["train_y"]).tolist() == [2, 2] and np.bincount(sub["test_y"]).tolist() == [1, 1]
        rows = {full["train_x"][i].tobytes() for i in range(12)}
        assert all(image.tobytes() in rows for image in sub["train_x"])      # real images, not new ones


def test_a_torn_summary_is_an_unfinished_run_that_the_sweep_finishes_again(tmp_path, capsys):
    path = _spec(tmp_path, grid={"seed": [0, 1]})
    root = tmp_path / "runs"
    assert cli_main(["sweep", path, "--root", str(root)]) == 0
    summary = root / "dup" / "seed=0" / "summary.json"
    whole = json.loads(summary.read_text())
    summary.write_text(summary.read_text()[:50])                  # torn by a crash mid-write
    capsys.readouterr()
    code, err = _cli(capsys, ["sweep", path, "--root", str(root), "--aggregate"])
    assert code == 2 and "seed=0" in err[-1] and "Unterminated" not in " ".join(err)
    assert cli_main(["sweep", path, "--root", str(root)]) == 0        # resumes the finished checkpoint
    again = json.loads(summary.read_text())
    assert again["final_rs"] == whole["final_rs"] and again["test_acc_at_best_val"] == whole["test_acc_at_best_val"]


def test_torch_reference_help_without_torch_is_one_line():
    import importlib.util
    import subprocess
    import sys
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here: the module imports and prints its docstring")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "torch_reference.py"), "--help"],
                            capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "needs torch" in lines[0]


def test_accuracy_vs_rs_reads_runs_without_validation_and_prints_the_file_it_wrote(tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "sweep" / "run").mkdir(parents=True)
    (tmp_path / "sweep" / "run" / "summary.json").write_text(summary_json(
        {"method": "set", "sparsity": 0.9, "val_fraction": 0.0}, final_rs=0.2, final_rs_reliable=0.15,
        best_epoch=None, best_val_acc=None, test_acc_at_best_val=None, last_test_acc=0.5))   # no best epoch
    result = subprocess.run([sys.executable, os.path.join(root, "experiments", "accuracy_vs_rs.py"),
                             str(tmp_path / "figure"), str(tmp_path / "sweep")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {tmp_path / 'figure.png'}" and (tmp_path / "figure.png").exists()


def test_a_demos_default_folder_is_named_by_data_set_and_length():
    """Following the README, a demo's quick run on one data set and its run on another never meet in
    one folder (every demo once wrote to runs/mlp_cifar10 whatever the data set)."""
    import importlib.util
    from tinyitop.cli import default_out
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("mlp_demo", os.path.join(root, "demos", "mlp_cifar10.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    folders = {default_out(demo.PAPER, dataset, quick) for dataset in ("cifar10", "fashion-mnist", "synthetic",
                                                                        "/data/mine.npz") for quick in (False, True)}
    assert len(folders) == 8 and default_out(demo.PAPER, "cifar10", False) == "runs/mlp_cifar10"
    assert default_out(demo.PAPER, "/data/mine.npz", True) == "runs/mlp_cifar10_mine_quick"


def test_progress_bars_only_on_a_terminal(monkeypatch):
    """Into a pipe (`| tee`, a job's log) a bar is hundreds of carriage-return updates: none then."""
    from tinyitop.metrics import progress
    items = [1, 2, 3]
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert progress(items, 3, True, "epoch 1") is items
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    bar = progress(items, 3, True, "epoch 1")
    assert bar is not items and list(bar) == items
    assert progress(items, 3, False, "epoch 1") is items


def test_compare_methods_gives_the_difference_of_seed_means_and_its_standard_error(tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    accuracies = {"static-0.98": [0.58, 0.59, 0.60], "SET-ITOP-0.98": [0.61, 0.62, 0.63], "dense": [0.7]}
    for label, values in accuracies.items():
        for seed, value in enumerate(values):
            (tmp_path / f"{label}_seed={seed}").mkdir()
            (tmp_path / f"{label}_seed={seed}" / "summary.json").write_text(summary_json(
                test_acc_at_best_val=value, last_test_acc=value, final_rs=0.1, final_rs_reliable=0.05))
    result = subprocess.run([sys.executable, os.path.join(root, "experiments", "compare_methods.py"), str(tmp_path),
                             "--baseline", "static 0.98"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("| SET-ITOP-0.98 |"))
    # means 0.62 and 0.59, sd 0.01 each: difference 3.00 points, SE sqrt(2 * 0.01^2 / 3) = 0.82 points
    assert "| +3.00 | 0.82 | +3.7 | **yes** |" in row, row
    dense = next(line for line in result.stdout.splitlines() if line.startswith("| dense |"))
    assert dense.endswith("|  |  |  |  |")                              # one seed: no standard error
    missing = subprocess.run([sys.executable, os.path.join(root, "experiments", "compare_methods.py"), str(tmp_path),
                              "--baseline", "static"], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.startswith("error:") and "static-0.98" in missing.stderr


def test_reproduce_rows_finds_a_logged_run_again_and_a_changed_row(tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    train(_config(tmp_path, epochs=3, limit_train=400), log=lambda *_: None)
    script = [sys.executable, os.path.join(root, "experiments", "reproduce_rows.py"), str(tmp_path / "run"), "--epochs", "2"]
    same = subprocess.run(script, capture_output=True, text=True, cwd=root)
    assert same.returncode == 0 and same.stdout.startswith("same rows: 2 epoch rows"), same.stdout + same.stderr
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    changed = json.loads(rows[1])
    changed["rs"] += 1e-12                                                  # one bit of one logged figure
    (tmp_path / "run" / "metrics.jsonl").write_text("\n".join([rows[0], json.dumps(changed), *rows[2:]]) + "\n")
    different = subprocess.run(script, capture_output=True, text=True, cwd=root)
    assert different.returncode == 1 and "metrics.jsonl: row 2 differs" in different.stdout and "rs" in different.stdout


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_a_folder_where_a_run_keeps_a_file_is_never_deleted(tmp_path, capsys, flag):
    """A folder named summary.json (a file of the run's, in its manifest) is refused in one line, with
    its content kept: --overwrite once removed it whole."""
    out = tmp_path / "run"
    base = ["train", "--dataset", "synthetic", "--hidden", "8", "--limit-train", "64", "--epochs", "1",
            "--batch-size", "16", "--method", "static", "--sparsity", "0.9", "--no-progress", "--no-plots"]
    assert cli_main(base + ["--out", str(out)]) == 0
    (out / "summary.json").unlink()
    (out / "summary.json").mkdir()
    (out / "summary.json" / "mine.txt").write_text("the user's")
    capsys.readouterr()
    assert cli_main(base + ["--out", str(out), flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a folder named summary.json" in err[0]
    assert (out / "summary.json" / "mine.txt").read_text() == "the user's"


def test_a_folder_named_like_a_partial_write_is_left_alone(tmp_path, capsys):
    """Orphans of a crash mid-write (.NAME.tinyitop-partial-PID files) are removed on resume; a folder of
    that name is not one (it was an IsADirectoryError traceback) and stays."""
    out = tmp_path / "run"
    base = ["train", "--dataset", "synthetic", "--hidden", "8", "--limit-train", "64", "--epochs", "1",
            "--batch-size", "16", "--no-progress", "--no-plots", "--out", str(out)]
    assert cli_main(base) == 0
    (out / ".summary.json.tinyitop-partial-99").mkdir()
    (out / ".metrics.jsonl.tinyitop-partial-98").write_text("torn")
    assert cli_main(base + ["--resume"]) == 0
    assert (out / ".summary.json.tinyitop-partial-99").is_dir()
    assert not (out / ".metrics.jsonl.tinyitop-partial-98").exists()


def test_overwrite_never_removes_a_file_of_the_users_inside_the_lth_twin(tmp_path, capsys):
    """--overwrite replaces LTH's dense twin (OUT/dense) whole: a file of the user's put in it is refused
    in one line and kept, not removed with the twin."""
    out = tmp_path / "run"
    base = ["train", "--dataset", "synthetic", "--hidden", "8", "--limit-train", "64", "--epochs", "1",
            "--batch-size", "16", "--method", "lth", "--sparsity", "0.9", "--no-progress", "--no-plots", "--out", str(out)]
    assert cli_main(base) == 0
    (out / "dense" / "notes.txt").write_text("the user's")
    capsys.readouterr()
    assert cli_main(base + ["--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notes.txt" in err[0]
    assert (out / "dense" / "notes.txt").read_text() == "the user's" and (out / "summary.json").exists()
