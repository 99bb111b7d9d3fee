"""Grids of experiments: `python -m tinyitop sweep CONFIG.json`.

A config names a base experiment, a grid of settings (crossed), optional variants (each crossed with
the grid), a reduced preset (the default, a 2-core CPU finishes it in well under an hour) and the
paper's settings (`--full`). Every run is one `python -m tinyitop train` command in its own folder:
finished runs (summary.json) are skipped, unfinished ones resume from their checkpoint, so a sweep can
be killed and restarted. `--print-commands` prints those commands for a cluster scheduler; `--aggregate`
then collects mean +- std over seeds into results.csv / results.md / results.png.
"""
import concurrent.futures
import csv
import io
import itertools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time

from tinyitop import checkpoint
from tinyitop.rundir import atomic_write, lock
from tinyitop.config import Config, changed_settings

METRICS = ("test_acc_at_best_val", "last_test_acc", "final_rs", "final_rs_reliable", "final_train_acc",
           "generalization_gap", "train_flops_rel", "test_flops_rel")
CONFIG_FIELDS = set(Config.__dataclass_fields__)
NEGATABLE = {"augment"}     # on/off settings whose False is a flag of its own (--no-augment)
SPEC_KEYS = {"name", "title", "claim", "plot", "reduced", "full"}
PLOT_KEYS = {"x", "y", "series", "xscale"}
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=,+-]*")     # a folder name: no '/', no '..', no leading dot


class SweepFailed(RuntimeError):
    """Some runs of the sweep failed (their points are marked in results.md)."""


def load_config(path, full=False):
    """The sweep spec and its preset ('reduced', or 'full'), checked: every problem names the file."""
    if os.path.isdir(path):
        raise ValueError(f"sweep config {path} is a folder: give a JSON file, e.g. experiments/fig3_update_interval.json")
    if not os.path.isfile(path):
        raise ValueError(f"sweep config {path} does not exist (the shipped ones are in experiments/)")
    try:
        with open(path) as f:
            spec = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at position {err.start}): "
                         "save it as UTF-8") from None
    section = "full" if full else "reduced"
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError(f"{path}: a sweep config is a JSON object with a \"name\" and a \"{section}\" section")
    if section not in spec:
        raise ValueError(f"{path} has no \"{section}\" section" + (" (it has no --full settings)" if full else ""))
    unknown_keys = set(spec) - SPEC_KEYS
    if unknown_keys:
        raise ValueError(f"{path}: unknown keys {sorted(unknown_keys)} (a sweep config has {', '.join(sorted(SPEC_KEYS))})")
    if not SAFE_NAME.fullmatch(spec["name"]):
        raise ValueError(f"{path}: \"name\" {spec['name']!r} must be a plain folder name (letters, digits, _ . = , + -)")
    plot = spec.get("plot")
    if plot is not None and (not isinstance(plot, dict) or "x" not in plot or set(plot) - PLOT_KEYS):
        raise ValueError(f"{path}: \"plot\" must be an object with \"x\" and optionally "
                         f"\"y\", \"series\", \"xscale\"; got {plot!r}")
    preset = spec[section]
    if not isinstance(preset, dict):
        raise ValueError(f"{path}: \"{section}\" must be a JSON object, got {type(preset).__name__}")
    for key, kind in (("base", dict), ("grid", dict), ("variants", list)):
        if not isinstance(preset.get(key, kind()), kind):
            raise ValueError(f"{path}: \"{section}.{key}\" must be a JSON {'object' if kind is dict else 'list'}, "
                             f"got {type(preset[key]).__name__}")
    if any(not isinstance(v, list) or not v for v in preset.get("grid", {}).values()):
        raise ValueError(f"{path}: every \"{section}.grid\" entry must be a non-empty list of values")
    if any(not isinstance(v, dict) for v in preset.get("variants", [])):
        raise ValueError(f"{path}: \"{section}.variants\" must be a list of objects")
    unknown = set(preset.get("base", {})) | set(preset.get("grid", {}))
    for variant in preset.get("variants", [{}]):
        unknown |= set(variant) - {"label"}
    unknown -= CONFIG_FIELDS
    if unknown:
        raise ValueError(f"{path}: unknown settings {sorted(unknown)}")
    unknown_sections = set(preset) - {"base", "grid", "variants"}
    if unknown_sections:
        raise ValueError(f"{path}: \"{section}\" has unknown keys {sorted(unknown_sections)} (base, grid, variants)")
    return spec, preset


def check_runs(path, runs):
    """Every run's settings are valid training options and every run has a folder of its own,
    checked before any run starts."""
    ids = [run_id for run_id, _, _ in runs]
    shared = sorted({run_id for run_id in ids if ids.count(run_id) > 1})
    if shared:
        raise ValueError(f"{path}: {len(shared)} run folder(s) would be shared by several runs ({', '.join(shared)}): "
                         "two variants have the same label, or a grid lists a value twice; make them distinct")
    for run_id, _, settings in runs:
        try:
            Config(**resolved(settings)).validate()
        except (TypeError, ValueError) as err:
            detail = str(err).removeprefix("bad options: ")
            raise ValueError(f"{path}: run {run_id}: {detail}") from None


def check_plot(path, plot, runs):
    """The figure's axes name settings that vary between runs (seed is averaged over) and metrics
    that exist: checked up front, not found by a traceback after every run finished."""
    if not plot:
        return
    commands = [(run_id, label, settings, None) for run_id, label, settings in runs]
    columns = (_varied(commands) - {"seed"}) | ({"label"} if any(label for _, label, _ in runs) else set())
    for key in ("x", "series"):
        if plot.get(key) is not None and plot[key] not in columns:
            raise ValueError(f"{path}: plot \"{key}\" is {plot[key]!r}, but the runs vary only in "
                             f"{sorted(columns) or 'nothing but the seed'} (the seed is averaged over)")
    metrics = plot.get("y", ["test_acc_at_best_val"])
    if not isinstance(metrics, list) or not metrics or set(metrics) - set(METRICS):
        raise ValueError(f"{path}: plot \"y\" must be a list of {', '.join(METRICS)}; got {metrics!r}")


def _saved_config(run_folder):
    """The settings a run folder was trained with (summary.json, else its checkpoint), or None."""
    summary = _summary(*os.path.split(run_folder))
    if summary is not None:
        return summary["config"]
    if os.path.exists(os.path.join(run_folder, "checkpoint.npz")):
        try:
            return checkpoint.read_meta(os.path.join(run_folder, "checkpoint.npz"))["config"]
        except ValueError:
            return None
    return None


def check_not_stale(folder, runs):
    """A run folder's identity is all of its resolved settings, not only the grid values in its name:
    a folder trained with other settings (the base edited since) is refused, never reported."""
    stale = []
    for run_id, _, settings in runs:
        saved = _saved_config(os.path.join(folder, run_id))
        if saved is None:
            continue
        changed = [f"{k} {old} -> {new}" for k, old, new in changed_settings(saved, Config(**resolved(settings)))]
        if changed:
            stale.append(f"{run_id} ({', '.join(changed)})")
    if stale:
        raise ValueError(f"{len(stale)} run folder(s) under {folder} were trained with other settings than the "
                         f"config now gives: {stale[0]}{' and more' if len(stale) > 1 else ''}. Use another --root "
                         "(or move those folders away) so that old results are not reported as new")


def expand(preset):
    """[(run_id, settings)] for every variant x grid point, in a stable order."""
    grid = preset.get("grid", {})
    keys = list(grid)
    runs = []
    for variant in preset.get("variants", [{}]):
        label = variant.get("label")
        for values in itertools.product(*(grid[k] for k in keys)):
            overrides = {k: v for k, v in variant.items() if k != "label"}
            overrides.update(zip(keys, values))
            parts = ([label] if label else []) + [f"{k}={_text(v)}" for k, v in overrides.items()
                                                   if not (label and k in variant)]
            runs.append(("_".join(parts).replace("/", "-").replace(" ", "-"), label, {**preset.get("base", {}), **overrides}))
    return runs


def _text(value):
    return ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def resolved(settings):
    """A run's settings as training sees them: a dense run has no sparsity but 0 (the base's is for
    the sparse runs beside it, and `train --method dense` refuses any other)."""
    if settings.get("method") == "dense" and settings.get("sparsity", 0) != 0:
        return {k: v for k, v in settings.items() if k != "sparsity"}
    return settings


def train_command(settings, out):
    """The `python -m tinyitop train` command line for these settings."""
    args = [sys.executable, "-m", "tinyitop", "train", "--out", out, "--resume", "--no-progress", "--no-plots"]
    for key, value in resolved(settings).items():
        if value is None or key in ("out", "resume", "progress"):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args += [flag] if value else (["--no-" + flag[2:]] if key in NEGATABLE else [])
        else:
            args += [flag, _text(value)]
    return args


def _stop_with_parent():
    """In a worker, before it starts (Linux): the kernel sends it SIGTERM when the sweep process dies,
    even by kill -9, so no run trains on as an orphan. It stops as on Ctrl-C, keeping its checkpoint."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass                                                                 # not Linux: no such guard


class _Workers:
    """Runs train commands as child processes; `stop()` (Ctrl-C) starts no new run and stops the
    running ones with SIGINT, so each keeps its last checkpoint and the sweep resumes later."""

    def __init__(self, threads):
        self.threads, self.stopping, self.running = threads, threading.Event(), set()
        self._lock = threading.Lock()

    def run(self, args, out):
        if self.stopping.is_set():
            return None, 0.0
        os.makedirs(out, exist_ok=True)
        env = dict(os.environ)
        if self.threads == 1:   # one process per core: no BLAS or gather threads inside
            env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TINYITOP_THREADS="1")
        started = time.perf_counter()
        with open(os.path.join(out, "log.txt"), "a") as log:
            with self._lock:
                if self.stopping.is_set():
                    return None, 0.0
                process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                           preexec_fn=_stop_with_parent)
                self.running.add(process)
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
        continue_command=None):
    """Run (or only aggregate) a sweep; `dataset` replaces the preset's data set (e.g. the user's npz),
    and the folder name then says which data the results are on. Raises SweepFailed if runs failed,
    KeyboardInterrupt (saying how to continue, `continue_command`) on Ctrl-C."""
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    spec, preset = load_config(config_path, full)
    folder = os.path.join(root, spec["name"] + ("-full" if full else ""))
    if dataset is not None:
        preset = {**preset, "base": {**preset.get("base", {}), "dataset": dataset}}
        folder += "-" + os.path.splitext(os.path.basename(dataset))[0]
    runs = expand(preset)
    check_runs(config_path, runs)
    check_plot(config_path, spec.get("plot"), runs)
    commands = [(run_id, label, settings, train_command(settings, os.path.join(folder, run_id)))
                for run_id, label, settings in runs]
    if print_commands:
        for *_, args in commands:
            print(shlex.join(["python"] + args[1:]))   # portable: the scheduler's python
        return None
    check_not_stale(folder, runs)
    failed = {}
    os.makedirs(folder, exist_ok=True)
    with _sweep_lock(folder):
        if not aggregate_only:
            failed = _run_all(spec, folder, commands, workers, continue_command)
        unfinished = [c[0] for c in commands if c[0] not in failed and _summary(folder, c[0]) is None]
        rows = aggregate(spec, folder, commands, {**failed, **{run_id: "not finished" for run_id in unfinished}})
    if unfinished:
        raise SweepFailed(f"{len(unfinished)} of {len(commands)} runs have not finished ({', '.join(unfinished[:3])}"
                          f"{' and more' if len(unfinished) > 3 else ''}): the results hold the others only, with "
                          "fewer seeds where a group lacks some (marked in results.md); run the sweep without "
                          "--aggregate to finish them")
    if failed:
        listing = "; ".join(f"{run_id} (log: {os.path.join(folder, run_id, 'log.txt')})" for run_id in failed)
        raise SweepFailed(f"{len(failed)} of {len(commands)} runs failed: {listing}. Their points are missing "
                          f"from the results (marked in results.md); rerun the sweep to retry them")
    return rows


class _sweep_lock:
    """One sweep per folder at a time (an OS lock, released when the process dies): two sweeps on
    one root would resume each other's runs and report false failures."""

    def __init__(self, folder):
        self.path = os.path.join(folder, ".sweep.lock")

    def __enter__(self):
        self.file = lock(open(self.path, "a+"), f"another sweep (PID {{pid}}) is running in "
                                                f"{os.path.dirname(self.path)}: wait for it to finish, or use another --root")
        return self

    def __exit__(self, *exc):
        self.file.close()


def _run_all(spec, folder, commands, workers, continue_command=None):
    """Run the unfinished runs in parallel; returns {run_id: exit status} of those that failed."""
    todo = [c for c in commands if _summary(folder, c[0]) is None]     # a torn summary: rerun, it resumes
    workers = workers or min(2, os.cpu_count() or 1)
    print(f"{spec['name']}: {len(commands)} runs, {len(commands) - len(todo)} already finished, "
          f"{workers} worker(s); logs in {folder}/RUN/log.txt", flush=True)
    runner = _Workers(1 if workers > 1 else None)
    failed = {}
    pool = concurrent.futures.ThreadPoolExecutor(workers)
    try:
        futures = {pool.submit(runner.run, args, os.path.join(folder, run_id)): run_id
                   for run_id, _, _, args in todo}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            code, seconds = future.result()
            run_id = futures[future]
            if code != 0:
                failed[run_id] = code
            status = "ok" if code == 0 else f"FAILED (exit {code}, see {os.path.join(folder, run_id, 'log.txt')})"
            print(f"[{done}/{len(todo)}] {run_id}: {status} in {seconds:.0f} s", flush=True)
    except KeyboardInterrupt:
        runner.stop()
        pool.shutdown(wait=True, cancel_futures=True)
        finished = sum(_summary(folder, c[0]) is not None for c in commands)
        how = continue_command or "the same sweep command"
        raise KeyboardInterrupt(f"sweep interrupted: {finished} of {len(commands)} runs finished; running ones "
                                f"kept their last checkpoint. Continue with: {how}") from None
    pool.shutdown(wait=True)
    return failed


def _summary(folder, run_id):
    """A finished run's summary.json, or None: absent, or torn (a crash mid-write, a full disk), in
    which case the run is not finished: rerunning its command resumes the checkpoint and rewrites it."""
    try:
        with open(os.path.join(folder, run_id, "summary.json")) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        return None
    keys = ("config", "final_train_acc", "last_test_acc", "final_rs")
    return summary if isinstance(summary, dict) and all(k in summary for k in keys) else None


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def aggregate(spec, folder, commands, failed=None):
    """Group runs that differ only by seed; write results.csv, results.md, results.png and curves.png
    (test accuracy and R_s per epoch of each group's first seed). Failed runs ({run_id: exit
    status}) are listed under the table and named on the figure."""
    failed = failed or {}
    varied = _varied(commands) - {"seed"}
    groups = {}
    for run_id, label, settings, _ in commands:
        summary = _summary(folder, run_id)
        if summary is None:
            continue
        summary["generalization_gap"] = summary["final_train_acc"] - summary["last_test_acc"]
        key = tuple((k, _text(v)) for k, v in settings.items() if k in varied)
        group = groups.setdefault(key, {"label": label, "settings": dict(key), "summaries": [], "runs": []})
        group["summaries"].append(summary)
        group["runs"].append(os.path.join(folder, run_id))
    rows = []
    for group in groups.values():
        row = {"label": group["label"] or "", **group["settings"], "seeds": len(group["summaries"])}
        for metric in METRICS:
            row[metric], row[metric + "_std"] = _mean_std([s.get(metric) for s in group["summaries"]])
        rows.append(row)
    if not rows:
        print("no finished runs to aggregate")
        return []
    columns = list(dict.fromkeys(key for row in rows for key in row))    # union: variants set different keys
    rows = [{key: row.get(key, "") for key in columns} for row in rows]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(os.path.join(folder, "results.csv"), lambda f: f.write(text.getvalue().encode()))
    table = markdown_table(rows)
    if failed:
        table += (f"\n**{len(failed)} failed run(s) or unfinished ones, missing from the table above:** " +
                  ", ".join(f"`{run_id}` ({code if isinstance(code, str) else f'exit {code}'}, {run_id}/log.txt)"
                            for run_id, code in failed.items()) + "\n")
    atomic_write(os.path.join(folder, "results.md"), lambda f: f.write(table.encode()))
    if spec.get("plot"):
        from tinyitop.plots import sweep_figure
        title = spec.get("title", spec["name"])
        if failed:
            title += f"\n({len(failed)} failed or unfinished run(s) missing: {', '.join(failed)})"
        sweep_figure(rows, spec["plot"], os.path.join(folder, "results.png"), title)
        from tinyitop.plots import sweep_curves
        names = {g["label"] or " ".join(f"{k}={v}" for k, v in g["settings"].items()) or "run": g["runs"][0]
                 for g in groups.values()}
        sweep_curves(names, os.path.join(folder, "curves.png"), title)
    print(table)
    print(f"wrote {folder}/results.csv, results.md" + (", results.png, curves.png" if spec.get("plot") else ""))
    return rows


def _varied(commands):
    """Settings that differ between runs (the columns worth showing)."""
    keys = set().union(*(settings for _, _, settings, _ in commands))
    return {k for k in keys if len({_text(s.get(k)) for _, _, s, _ in commands}) > 1}


def markdown_table(rows):
    settings = [c for c in rows[0] if c not in METRICS and not c.endswith("_std") and c != "seeds"
                and any(str(row[c]) for row in rows)]     # no empty label column
    shown = ("test_acc_at_best_val", "final_rs", "final_rs_reliable", "generalization_gap", "train_flops_rel")
    header = settings + ["seeds"] + [m for m in shown]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row[c]) for c in settings] + [str(row["seeds"])]
        for metric in shown:
            mean, std = row[metric], row[metric + "_std"]
            cells.append("" if mean is None else f"{mean:.4f} +- {std:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
