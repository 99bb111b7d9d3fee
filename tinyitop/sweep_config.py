"""A sweep config, expanded into runs: `python -m tinyitop sweep CONFIG.json` (docs/RUNS.md, "Sweeps").

A config names a base experiment, a grid of settings (crossed), optional variants (each crossed with
the grid), a reduced preset (the default) and the paper's settings (`--full`). Each run is one
`python -m tinyitop train` command with a folder of its own; every run is checked (its settings,
its folder, the figure's axes) before any starts.
"""
import itertools
import json
import os
import re
import sys

from tinyitop import checkpoint
from tinyitop.atomic import parse_json
from tinyitop.config import Config, changed_settings
from tinyitop.report import TornSummary, read_summary

METRICS = ("test_acc_at_best_val", "last_test_acc", "final_rs", "final_rs_reliable", "final_train_acc",
           "generalization_gap", "train_flops_rel", "test_flops_rel")
CONFIG_FIELDS = set(Config.__dataclass_fields__)
NEGATABLE = {"augment"}     # on/off settings whose False is a flag of its own (--no-augment)
SPEC_KEYS = {"name", "title", "claim", "plot", "reduced", "full"}
PLOT_KEYS = {"x", "y", "series", "xscale"}
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=,+-]*")     # a folder name: no '/', no '..', no leading dot
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TINYITOP_THREADS")


def load_config(path, full=False):
    """The sweep spec and its preset ('reduced', or 'full'), checked: every problem names the file."""
    if os.path.isdir(path):
        raise ValueError(f"sweep config {path} is a folder: give a JSON file, e.g. experiments/fig3_update_interval.json")
    if not os.path.isfile(path):
        raise ValueError(f"sweep config {path} does not exist (the shipped ones are in experiments/)")
    try:
        with open(path) as f:
            spec = parse_json(f.read(), path)
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
    columns = (varied_settings(commands) - {"seed"}) | ({"label"} if any(label for _, label, _ in runs) else set())
    for key in ("x", "series"):
        if plot.get(key) is not None and plot[key] not in columns:
            raise ValueError(f"{path}: plot \"{key}\" is {plot[key]!r}, but the runs vary only in "
                             f"{sorted(columns) or 'nothing but the seed'} (the seed is averaged over)")
    metrics = plot.get("y", ["test_acc_at_best_val"])
    if not isinstance(metrics, list) or not metrics or set(metrics) - set(METRICS):
        raise ValueError(f"{path}: plot \"y\" must be a list of {', '.join(METRICS)}; got {metrics!r}")


def _saved_config(run_folder):
    """The settings a run folder was trained with (summary.json, else its checkpoint), or None."""
    summary = finished_summary(*os.path.split(run_folder))
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
                         f"config now gives (so says their summary.json or checkpoint.npz): {stale[0]}"
                         f"{' and more' if len(stale) > 1 else ''}. Use another --root "
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
            parts = ([label] if label else []) + [f"{k}={text_of(v)}" for k, v in overrides.items()
                                                   if not (label and k in variant)]
            runs.append(("_".join(parts).replace("/", "-").replace(" ", "-"), label, {**preset.get("base", {}), **overrides}))
    return runs


def text_of(value):
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
            args += [flag, text_of(value)]
    return args


def finished_summary(folder, run_id):
    """A finished run's summary.json, or None: absent, or torn (a crash mid-write, a full disk), in
    which case the run is not finished: rerunning its command resumes the checkpoint and rewrites it.
    One that reads but lacks what the sweep needs is an error naming it."""
    try:
        return read_summary(os.path.join(folder, run_id, "summary.json"), remedy="move it away and run the sweep "
                            "again: that run then resumes from its checkpoint and writes it anew")
    except (OSError, TornSummary):
        return None


def varied_settings(commands):
    """Settings that differ between runs (the columns worth showing): commands are
    (run_id, label, settings, args) tuples."""
    keys = set().union(*(settings for _, _, settings, _ in commands))
    return {k for k in keys if len({text_of(s.get(k)) for _, _, s, _ in commands}) > 1}
