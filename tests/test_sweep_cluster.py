"""Sweeps beyond one process: several sweep processes (or machines) on one folder train each run once,
a run whose sweep died is taken over and finished as if never stopped, shards and Slurm array tasks
cover a preset exactly once, and a generated Slurm script completes the sweep."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tinyitop import claims
from tinyitop.metrics import TIMING_FIELDS, read_jsonl
from tinyitop.sweep import in_shard, parse_shard, slurm_shard
from tinyitop.train import Config, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _spec(tmp_path, seeds=6, epochs=2, limit=600):
    spec = {"name": "tiny", "title": "tiny",
            "reduced": {"base": {"dataset": "synthetic", "hidden": [16], "epochs": epochs, "lr": 0.05, "sparsity": 0.9,
                                 "method": "set", "update_interval": 3, "limit_train": limit},
                        "grid": {"seed": list(range(seeds))}}}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    return str(path)


def _sweep(config, root, *extra, env=None):
    return subprocess.Popen([sys.executable, "-m", "tinyitop", "sweep", config, "--root", str(root), *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


def _starts(run_folder):
    """How many times a training process started in this run folder (each writes its header once)."""
    with open(os.path.join(run_folder, "log.txt")) as f:
        return sum(1 for line in f if " on synthetic: " in line)


def _results(run_folder):
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS}
            for row in read_jsonl(os.path.join(run_folder, "metrics.jsonl"))]


def test_three_sweeps_at_once_train_every_run_exactly_once(tmp_path):
    config, root = _spec(tmp_path), tmp_path / "runs"
    processes = [_sweep(config, root, "--workers", "1") for _ in range(3)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    folder = root / "tiny"
    runs = sorted(p for p in os.listdir(folder) if p.startswith("seed="))
    assert len(runs) == 6
    assert all(_starts(folder / r) == 1 for r in runs), [(r, _starts(folder / r)) for r in runs]
    assert sum(o.count(": ok in") for o in outputs) == 6                  # each trained by one of them
    assert not [f for r in runs for f in os.listdir(folder / r) if f.startswith(".claim")]   # all released


def test_a_killed_sweeps_run_is_taken_over_and_ends_as_if_never_stopped(tmp_path):
    config, root = _spec(tmp_path, seeds=1, epochs=4, limit=1200), tmp_path / "runs"
    run_folder = root / "tiny" / "seed=0"
    victim = _sweep(config, root, "--workers", "1")
    deadline = time.time() + 300
    while not (run_folder / "checkpoint.npz").exists():                   # midway: after its first epoch
        assert time.time() < deadline and victim.poll() is None, "the sweep never got going"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)                                    # no chance to clean up
    victim.wait()
    assert claims.state(str(run_folder))[0] in ("stale", "running")      # its claim is left behind
    while claims._folder_locked(str(run_folder)):                        # its trainer stops (PDEATHSIG)
        assert time.time() < deadline
        time.sleep(0.05)
    assert claims.state(str(run_folder))[0] == "stale"
    heir = _sweep(config, root, "--workers", "1")
    out = heir.communicate(timeout=600)[0]
    assert heir.returncode == 0 and "1 runs, 0 already finished" in out, out
    assert "resumed from" in (run_folder / "log.txt").read_text()
    spec = json.loads(open(config).read())["reduced"]["base"]
    twin = Config(**{**spec, "hidden": tuple(spec["hidden"]), "seed": 0, "out": str(tmp_path / "twin"),
                     "progress": False})
    train(twin, log=lambda *_: None)
    assert _results(run_folder) == _results(tmp_path / "twin")          # the same run, bit for bit


def test_a_claim_from_another_host_is_taken_over_only_once_its_heartbeat_is_stale(tmp_path):
    config, root = _spec(tmp_path, seeds=2), tmp_path / "runs"
    folder = root / "tiny"
    for seed, age in ((0, 3600), (1, 5)):                                 # a copied folder: another host's claims
        (folder / f"seed={seed}").mkdir(parents=True)
        claim = folder / f"seed={seed}" / ".claim-1"
        claim.write_text(json.dumps({"host": "elsewhere.cluster", "pid": 1, "started": time.time() - age}))
        os.utime(claim, (time.time() - age, time.time() - age))
    status = _sweep(config, root, "--status")                           # default timeout: 600 s
    listing = status.communicate(timeout=120)[0]
    assert "1 stale, 1 running" in listing and "seed=1: running (host elsewhere.cluster" in listing, listing
    started = time.time()
    sweep = _sweep(config, root, "--workers", "1", "--claim-timeout", "20")
    out = sweep.communicate(timeout=600)[0]
    assert sweep.returncode == 0 and out.count(": ok in") == 2, out      # seed=0 at once; seed=1 once
    assert time.time() - started > 15                                    # its heartbeat was 20 s old
    assert all(_starts(folder / f"seed={s}") == 1 for s in (0, 1))


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_shards_cover_every_run_exactly_once(count):
    commands = [(f"run{i}", None, {}, []) for i in range(11)]
    covered = [c[0] for index in range(count) for c in in_shard(commands, (index, count))]
    assert sorted(covered) == sorted(c[0] for c in commands)
    tasks = [slurm_shard({"SLURM_ARRAY_TASK_ID": str(5 + i), "SLURM_ARRAY_TASK_MIN": "5",
                          "SLURM_ARRAY_TASK_MAX": str(4 + count)}) for i in range(count)]
    assert tasks == [(i, count) for i in range(count)]
    assert [slurm_shard({"SLURM_ARRAY_TASK_ID": str(i), "SLURM_ARRAY_TASK_COUNT": str(count)})
            for i in range(count)] == tasks


@pytest.mark.parametrize("text", ["2/2", "a/b", "1", "-1/3"])
def test_a_bad_shard_is_refused(text):
    with pytest.raises(ValueError, match="--shard"):
        parse_shard(text)


def test_two_shards_finish_the_sweep_between_them(tmp_path):
    config, root = _spec(tmp_path, seeds=4), tmp_path / "runs"
    halves = [_sweep(config, root, "--shard", f"{i}/2", "--workers", "1") for i in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in halves]
    assert [p.returncode for p in halves] == [0, 0], outputs
    assert [o.count(": ok in") for o in outputs] == [2, 2]
    assert all(_starts(root / "tiny" / f"seed={s}") == 1 for s in range(4))


def test_the_slurm_script_run_by_hand_as_each_array_task_completes_the_sweep(tmp_path):
    config, root = _spec(tmp_path, seeds=4), tmp_path / "runs"
    made = _sweep(config, root, "--slurm", "--time", "0:10:00", "--mem", "1G")
    out = made.communicate(timeout=120)[0]
    script = root / "tiny" / "slurm.sh"
    assert made.returncode == 0 and f"sbatch {script}" in out, out
    text = script.read_text()
    assert "#SBATCH --array=0-3" in text and "#SBATCH --time=0:10:00" in text and "export OMP_NUM_THREADS=1" in text
    python_dir = os.path.dirname(sys.executable)                           # `python` as the node would find it
    env = {**os.environ, "PATH": python_dir + os.pathsep + os.environ["PATH"], "SLURM_ARRAY_TASK_COUNT": "4"}
    for task in range(4):
        done = subprocess.run(["bash", str(script)], env={**env, "SLURM_ARRAY_TASK_ID": str(task)},
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    assert all((root / "tiny" / f"seed={s}" / "summary.json").exists() for s in range(4))
    assert all(_starts(root / "tiny" / f"seed={s}") == 1 for s in range(4))


def _slurm_answers():
    """Whether a Slurm controller answers here: the client (`sbatch`) can be installed with no controller
    running (a machine where slurm-wlm was installed and its daemons have since stopped)."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return False
    try:
        return subprocess.run(["scontrol", "ping"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _slurm_answers(), reason="no Slurm controller answers here (`scontrol ping`): the script is "
                    "tested by hand-run array tasks above; on a cluster, `sbatch SWEEP/slurm.sh`")
def test_a_real_slurm_runs_the_array(tmp_path):
    config, root = _spec(tmp_path, seeds=4), tmp_path / "shared-runs"
    assert _sweep(config, root, "--slurm").wait(timeout=120) == 0
    submitted = subprocess.run(["sbatch", "--wait", str(root / "tiny" / "slurm.sh")], capture_output=True,
                               text=True, timeout=1800)
    assert submitted.returncode == 0, submitted.stderr
    status = _sweep(config, root, "--aggregate").communicate(timeout=120)[0]
    assert "4 done" in status


def test_a_background_sweep_with_sigint_ignored_still_stops_its_workers_on_sigterm(tmp_path):
    """A sweep started with `&` from a script inherits SIGINT ignored; SIGTERM must still stop it and
    its workers (which are stopped by SIGINT), each run keeping its checkpoint, without a traceback."""
    config, root = _spec(tmp_path, seeds=2, epochs=50, limit=1200), tmp_path / "runs"
    sweep = subprocess.Popen([sys.executable, "-m", "tinyitop", "sweep", config, "--root", str(root), "--workers", "2"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    run_folder = root / "tiny" / "seed=0"
    deadline = time.time() + 300
    while not (run_folder / "checkpoint.npz").exists():
        assert time.time() < deadline and sweep.poll() is None
        time.sleep(0.05)
    sweep.send_signal(signal.SIGTERM)
    out = sweep.communicate(timeout=120)[0]
    assert sweep.returncode == 130 and "0 of 2 runs finished" in out, out
    assert "FAILED" not in out and not (run_folder / ".failed").exists(), out   # stopped, not failed
    assert not claims._folder_locked(str(run_folder))                     # its trainer stopped too
    assert "Traceback" not in (run_folder / "log.txt").read_text()
    assert len(read_jsonl(str(run_folder / "metrics.jsonl"))) < 50


def test_the_slurm_script_is_rewritten_but_an_edited_one_is_kept(tmp_path, capsys):
    """--slurm again rewrites its own slurm.sh; one the user edited (their partition, their modules) is
    refused in one line and kept."""
    from tinyitop.cli import main
    config, root = _spec(tmp_path, seeds=2), tmp_path / "runs"
    make = ["sweep", str(config), "--root", str(root), "--slurm"]
    assert main(make) == 0 and main(make + ["--time", "1:00:00"]) == 0
    script = root / "tiny" / "slurm.sh"
    assert "#SBATCH --time=1:00:00" in script.read_text()
    script.write_text(script.read_text() + "module load mine\n")
    capsys.readouterr()
    assert main(make) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "slurm.sh" in err[0] and script.read_text().endswith("module load mine\n")
