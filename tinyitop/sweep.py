"""Running a sweep: `python -m tinyitop sweep CONFIG.json` (docs/RUNS.md: sweeps, and on a cluster).

A config expands into runs (sweep_config.py); this module trains them. Any number of sweep processes,
on one machine or on several sharing the sweep folder, can work on one sweep at once: each run is
claimed by exactly one of them (claims.py), a run whose claimer died is taken over and resumed from
its checkpoint, finished runs (summary.json) are skipped. `--shard I/N` (or a Slurm array task's
environment) keeps a process to every N-th run; `--slurm` writes a job-array script; `--status`
says where each run stands; the results of the finished runs are gathered by sweep_results.py.
"""
import concurrent.futures
import os
import shlex
import signal
import subprocess
import threading
import time

from tinyitop import claims
from tinyitop.atomic import atomic_write
from tinyitop.rundir import claim, record_drawn
from tinyitop.sweep_config import (THREAD_VARIABLES, check_not_stale, check_plot, check_runs, expand,
                                   finished_summary, load_config, train_command)
from tinyitop.sweep_results import (FAILED_NAME, aggregate, clear_failure, print_states, record_failure, result_files,
                                    results_lock, run_states)
from tinyitop.train import INTERRUPTED


class SweepFailed(RuntimeError):
    """Some runs of the sweep failed (their points are marked in results.md)."""


def parse_shard(text):
    """'I/N' -> (I, N) with 0 <= I < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: give I/N, e.g. 0/4 (this process runs runs I, I+N, I+2N, ...)") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: need 0 <= I < N")
    return index, count


def claim_timeout(seconds):
    """--claim-timeout, checked: a positive number of seconds (heartbeats come four times as often)."""
    if not seconds > 0:
        raise ValueError(f"--claim-timeout {seconds:g}: give a positive number of seconds")
    return seconds


def slurm_shard(environ=os.environ):
    """(I, N) of a Slurm array task, from SLURM_ARRAY_TASK_ID and _COUNT (or _MIN/_MAX), or None."""
    if "SLURM_ARRAY_TASK_ID" not in environ:
        return None
    task = int(environ["SLURM_ARRAY_TASK_ID"])
    low = int(environ.get("SLURM_ARRAY_TASK_MIN", 0))
    count = (int(environ["SLURM_ARRAY_TASK_COUNT"]) if "SLURM_ARRAY_TASK_COUNT" in environ
             else int(environ.get("SLURM_ARRAY_TASK_MAX", task)) - low + 1)
    if not 0 <= task - low < count:
        raise ValueError(f"Slurm array task {task} lies outside the array ({low} .. {low + count - 1})")
    return task - low, count


def in_shard(commands, shard):
    """The runs of `commands` (in their stable order) whose index is I mod N."""
    if shard is None:
        return commands
    index, count = shard
    return [c for i, c in enumerate(commands) if i % count == index]


def thread_env(threads):
    return {name: str(threads) for name in THREAD_VARIABLES}


def _stop_with_parent():
    """In a worker, before it starts (Linux): the kernel sends it SIGTERM when the sweep process dies,
    even by kill -9, so no run trains on as an orphan. It stops as on Ctrl-C, keeping its checkpoint.
    SIGINT back to its default: a sweep started with `&` from a script inherits SIGINT ignored, and
    its workers would then ignore the sweep's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass                                                                 # not Linux: no such guard


class _Workers:
    """Runs train commands as child processes; `stop()` (Ctrl-C) starts no new run and stops the
    running ones with SIGINT, so each keeps its last checkpoint and the sweep resumes later."""

    def __init__(self, threads, heartbeat=claims.HEARTBEAT_SECONDS):
        self.threads, self.heartbeat, self.stopping, self.running = threads, heartbeat, threading.Event(), set()
        self._lock = threading.Lock()

    def run(self, args, out, claim=None):
        """Exit status of one run (None if stopped before it began), and its seconds; a run taken
        over by another process (its claim lost) is stopped like Ctrl-C."""
        if self.stopping.is_set():
            return None, 0.0
        os.makedirs(out, exist_ok=True)
        env = {**os.environ, **(thread_env(1) if self.threads == 1 else {})}   # one process per core
        started = time.perf_counter()
        with open(os.path.join(out, "log.txt"), "a") as log:
            with self._lock:
                if self.stopping.is_set():
                    return None, 0.0
                process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                           preexec_fn=_stop_with_parent)
                self.running.add(process)
            if claim is not None:
                claim.start_heartbeat(lambda: process.send_signal(signal.SIGINT), self.heartbeat)
            code = process.wait()
            with self._lock:
                self.running.discard(process)
        return code, time.perf_counter() - started

    def stop(self):
        with self._lock:
            self.stopping.set()
            processes = list(self.running)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def run(config_path, root, full=False, workers=None, print_commands=False, aggregate_only=False, dataset=None,
        continue_command=None, shard=None, status=False, slurm=None, stale_after=claims.STALE_AFTER_SECONDS):
    """Run (or only aggregate, or list the state of) a sweep; `dataset` replaces the preset's data set
    (e.g. the user's npz), and the folder name then says which data the results are on. `shard`
    (I, N) keeps this process to every N-th run (default: a Slurm array task's, else all). Raises
    SweepFailed if runs failed or none finished, KeyboardInterrupt (saying how to continue,
    `continue_command`) on Ctrl-C."""
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"--workers must be between 1 and {MAX_WORKERS} (parallel runs, a process each), got {workers}")
    if slurm is not None:
        check_slurm_options(**slurm)
    spec, preset = load_config(config_path, full)
    folder = os.path.abspath(os.path.join(root, spec["name"] + ("-full" if full else "")))
    if dataset is not None:
        preset = {**preset, "base": {**preset.get("base", {}), "dataset": dataset}}
        folder += "-" + os.path.splitext(os.path.basename(dataset))[0]
    runs = expand(preset)
    check_runs(config_path, runs)
    check_plot(config_path, spec.get("plot"), runs)
    commands = [(run_id, label, settings, train_command(settings, os.path.join(folder, run_id)))
                for run_id, label, settings in runs]
    if print_commands:
        for run_id, *_, args in commands:
            print(_shell_command(args, os.path.join(folder, run_id)))
        return None
    if slurm is not None:
        return write_slurm_script(config_path, root, full, dataset, folder, len(commands), **slurm)
    check_not_stale(folder, runs)
    shard = shard if shard is not None else slurm_shard()
    failed = {}
    if os.path.isdir(folder) and not status:       # the results it will write: refused now, not after training
        with results_lock(folder):
            claim(folder, result_files(spec), "--root")
    if not (aggregate_only or status):              # a look at the state creates nothing
        os.makedirs(folder, exist_ok=True)
        failed = _run_all(spec, folder, in_shard(commands, shard), workers, continue_command, stale_after)
    states = run_states(folder, commands, stale_after)
    if status or aggregate_only:
        print_states(states)
    unfinished = {run_id: what for run_id, what, _ in states if what != "done" and run_id not in failed}
    done = len(commands) - len(unfinished) - len(failed)
    if not done:
        first = next((f" ({run_id}: {detail})" for run_id, what, detail in states if detail), "")
        raise SweepFailed(f"none of the {len(commands)} runs in {folder} has finished yet{first}: nothing to gather "
                          "(run the sweep without --aggregate/--status to train them)")
    rows = aggregate(spec, folder, commands, {**failed, **unfinished})
    if shard is not None and not (aggregate_only or status):
        return rows                  # one shard of many: the others' runs are theirs to finish
    if unfinished:
        raise SweepFailed(f"{len(unfinished)} of {len(commands)} runs have not finished ({', '.join(list(unfinished)[:3])}"
                          f"{' and more' if len(unfinished) > 3 else ''}): the results hold the {done} others, "
                          "with fewer seeds where a group lacks some (marked in results.md); --status says "
                          "where each stands, and the sweep without it trains what nobody is training")
    if failed:
        listing = "; ".join(f"{run_id} (log: {os.path.join(folder, run_id, 'log.txt')})" for run_id in failed)
        raise SweepFailed(f"{len(failed)} of {len(commands)} runs failed: {listing}. Their points are missing "
                          f"from the results (marked in results.md); rerun the sweep to retry them")
    return rows


def _shell_command(args, run_folder):
    """One run as a shell line for GNU parallel or a scheduler: one thread, absolute paths, its log."""
    env = " ".join(f"{k}={v}" for k, v in thread_env(1).items())
    train = shlex.join(["python"] + args[1:])              # portable: the node's python
    return f"mkdir -p {shlex.quote(run_folder)} && {env} {train} >> {shlex.quote(os.path.join(run_folder, 'log.txt'))} 2>&1"


POLL_SECONDS = 2          # how often a sweep with nothing to claim looks again at runs others hold


def _open_runs(folder, commands, skip, since):
    """Runs of `commands` still to train: not finished, not tried by this process, not failed in
    another process since this sweep began (each sweep retries a failed run once, not each process)."""
    open_runs = []
    for command in commands:
        run_id = command[0]
        if run_id in skip or finished_summary(folder, run_id) is not None:
            continue
        try:
            if os.stat(os.path.join(folder, run_id, FAILED_NAME)).st_mtime >= since:
                continue
        except OSError:
            pass
        open_runs.append(command)
    return open_runs


def _next_claim(folder, commands, skip, stale_after, lock, since):
    """The next open run this process wins a claim on, as (command, Claim); None if none is free now.
    Also says whether other processes still hold open runs (then it is worth looking again)."""
    with lock:
        open_runs = _open_runs(folder, commands, skip, since)
        for command in open_runs:
            run_id = command[0]
            claim = claims.try_claim(os.path.join(folder, run_id), stale_after)
            if claim is None:
                continue
            if finished_summary(folder, run_id) is not None:    # finished while we looked
                claim.release()
                continue
            skip.add(run_id)                                     # tried once per process
            return (command, claim), True
        return None, bool(open_runs)


def _run_all(spec, folder, commands, workers, continue_command=None, stale_after=claims.STALE_AFTER_SECONDS):
    """Train the runs of `commands` that no other process is training, `workers` at a time; returns
    {run_id: exit status} of those that failed here."""
    workers = workers or min(2, os.cpu_count() or 1)
    finished = sum(finished_summary(folder, c[0]) is not None for c in commands)
    print(f"{spec['name']}: {len(commands)} runs, {finished} already finished, {workers} worker(s); "
          f"logs in {folder}/RUN/log.txt", flush=True)
    runner = _Workers(1 if workers > 1 else None, min(claims.HEARTBEAT_SECONDS, stale_after / 4))
    failed, tried, lock, counter, since = {}, set(), threading.Lock(), [0], time.time()

    def worker():
        while not runner.stopping.is_set():
            taken, others = _next_claim(folder, commands, tried, stale_after, lock, since)
            if taken is None and others:           # held by other processes: wait for them to finish,
                runner.stopping.wait(POLL_SECONDS)   # or to go stale and be taken over here
                continue
            if taken is None:
                return
            (run_id, _, _, args), claim = taken
            run_folder = os.path.join(folder, run_id)
            clear_failure(run_folder)
            try:
                code, seconds = runner.run(args, run_folder, claim)
            finally:
                claim.release()
            if code is None:
                return
            stopped = code == INTERRUPTED and runner.stopping.is_set()   # the sweep stopped it: not a failure
            with lock:
                counter[0] += 1
                if code != 0 and not claim.lost() and not stopped:
                    failed[run_id] = code
                    record_failure(run_folder, code)
                what = ("ok" if code == 0 else "taken over by another process" if claim.lost()
                        else "stopped with the sweep, its last checkpoint kept" if stopped
                        else f"FAILED (exit {code}, see {os.path.join(run_folder, 'log.txt')})")
                print(f"[{counter[0]}] {run_id}: {what} in {seconds:.0f} s", flush=True)

    pool = concurrent.futures.ThreadPoolExecutor(workers)
    try:
        futures = [pool.submit(worker) for _ in range(workers)]
        while not all(future.done() for future in futures):
            concurrent.futures.wait(futures, timeout=0.5)        # timed: Ctrl-C reaches this thread
        for future in futures:
            future.result()
    except KeyboardInterrupt:
        runner.stop()
        pool.shutdown(wait=True, cancel_futures=True)
        done = sum(finished_summary(folder, c[0]) is not None for c in commands)
        how = continue_command or "the same sweep command"
        raise KeyboardInterrupt(f"sweep interrupted: {done} of {len(commands)} runs finished; running ones "
                                f"kept their last checkpoint. Continue with: {how}") from None
    pool.shutdown(wait=True)
    return failed


MAX_WORKERS = 256


def check_slurm_options(partition=None, time_limit=None, gpus=None, mem=None, cpus=1):
    """--slurm's options go into #SBATCH lines: one word each (no space or line break), cores >= 1."""
    if cpus < 1:
        raise ValueError(f"--cpus-per-task must be at least 1, got {cpus}")
    for option, value in (("--partition", partition), ("--time", time_limit), ("--gpus", gpus), ("--mem", mem)):
        if value is not None and (not value or any(c.isspace() for c in value) or not value.isprintable()):
            raise ValueError(f"{option} {value!r}: give one word for its #SBATCH line (e.g. --time 2:00:00, "
                             "--mem 8G), no spaces")


def write_slurm_script(config_path, root, full, dataset, folder, n_runs, partition=None, time_limit=None,
                       gpus=None, mem=None, cpus=1):
    """FOLDER/slurm.sh: one job array over the sweep, a task per run (each task a sweep process whose
    shard is its array index, so claims keep a resubmitted or duplicated task from training a run
    twice); prints the sbatch line."""
    os.makedirs(folder, exist_ok=True)
    sweep = ["python", "-m", "tinyitop", "sweep", os.path.abspath(config_path), "--root", os.path.abspath(root),
             "--workers", "1"] + (["--full"] if full else []) + (["--dataset", os.path.abspath(dataset)]
                                                                 if dataset and os.path.exists(dataset) else
                                                                 ["--dataset", dataset] if dataset else [])
    options = [f"--job-name=tinyitop-{os.path.basename(folder)}", f"--array=0-{n_runs - 1}",
               f"--cpus-per-task={cpus}", f"--output={folder}/slurm-%A_%a.out"]
    options += [f"--partition={partition}"] if partition else []
    options += [f"--time={time_limit}"] if time_limit else []
    options += [f"--gpus={gpus}"] if gpus else []
    options += [f"--mem={mem}"] if mem else []
    lines = ["#!/bin/bash", f"# {n_runs} runs of {os.path.basename(config_path)}, one array task each; "
             "resubmit the same script to retry what failed (finished runs are skipped)"]
    lines += [f"#SBATCH {option}" for option in options]
    lines += [f"export {k}={v}" for k, v in thread_env(cpus).items()]
    lines += [f"cd {shlex.quote(os.getcwd())}", "exec " + shlex.join(sweep), ""]
    path = os.path.join(folder, "slurm.sh")
    claim(folder, ["slurm.sh"], "--root")        # a slurm.sh of the user's (or edited since) is never replaced
    atomic_write(path, lambda f: f.write("\n".join(lines).encode()))
    os.chmod(path, 0o755)
    record_drawn(folder, ["slurm.sh"])
    print(f"wrote {path}; submit it with:\nsbatch {shlex.quote(path)}")
    return path
