"""Gathering a sweep: where each run stands, and the results of the finished ones.

`status` lists every run as done, running (claimed, heartbeat fresh), stale (its sweep is gone),
failed (with its log's last error line) or not started. `aggregate` groups the finished runs that
differ only by seed into results.csv, results.md and the figures, marking the rest.
"""
import contextlib
import csv
import fcntl
import io
import json
import math
import os

from tinyitop import claims
from tinyitop.atomic import atomic_write, parse_json
from tinyitop.rundir import LOCK_NAME, claim, record_drawn
from tinyitop.sweep_config import METRICS, finished_summary, text_of, varied_settings

RESULT_FILES = ("results.csv", "results.md", "results.png", "curves.png")   # a sweep's, in its folder


def result_files(spec):
    """The results a sweep of `spec` writes: the table always, the figures when it has a plot."""
    return list(RESULT_FILES if spec.get("plot") else RESULT_FILES[:2])
FAILED_NAME = ".failed"          # RUN/.failed: {"exit": status, "host": ..., "error": last log line}


def record_failure(run_folder, code):
    """Note a failed run (its exit status and its log's last error line) for `status` and the results."""
    record = {"exit": code, "error": last_error_line(os.path.join(run_folder, "log.txt"))}
    atomic_write(os.path.join(run_folder, FAILED_NAME), lambda f: f.write(json.dumps(record).encode()))


def clear_failure(run_folder):
    try:
        os.remove(os.path.join(run_folder, FAILED_NAME))
    except FileNotFoundError:
        pass


def last_error_line(log_path):
    """The log's last line that says what went wrong ('error: ...', an exception), else its last line."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "no log"
    for line in reversed(lines):
        if line.startswith("error:") or "Error" in line.split(":")[0]:
            return line
    return lines[-1] if lines else "empty log"


def run_states(folder, commands, stale_after=claims.STALE_AFTER_SECONDS):
    """[(run_id, state, detail)]: state one of done, running, stale, failed, not started."""
    states = []
    for run_id, *_ in commands:
        run_folder = os.path.join(folder, run_id)
        if finished_summary(folder, run_id) is not None:
            states.append((run_id, "done", ""))
            continue
        claim, holder = claims.state(run_folder, stale_after)
        if claim != "free":
            detail = f"host {holder.get('host')}, PID {holder.get('pid')}, heartbeat {holder.get('age', 0):.0f} s ago"
            states.append((run_id, claim, detail))
            continue
        try:
            with open(os.path.join(run_folder, FAILED_NAME), encoding="utf-8") as f:
                failure = parse_json(f.read(), FAILED_NAME)
            if not isinstance(failure, dict):           # damaged: shown as if the run had no record
                raise ValueError(f"{FAILED_NAME} is not a JSON object")
            states.append((run_id, "failed", f"exit {failure.get('exit')}: {failure.get('error')}"))
        except (OSError, ValueError):
            started = os.path.exists(os.path.join(run_folder, "checkpoint.npz"))
            torn = os.path.exists(os.path.join(run_folder, "summary.json"))       # there, but not JSON
            states.append((run_id, "not started" if not started else "stopped", "" if not started else
                           "its summary.json is torn: the next sweep resumes the run and writes it again" if torn else
                           "has a checkpoint: the next sweep resumes it"))
    return states


def print_states(states):
    counts = {}
    for _, what, _ in states:
        counts[what] = counts.get(what, 0) + 1
    print(", ".join(f"{n} {what}" for what, n in counts.items()))
    for run_id, what, detail in states:
        if what != "done":
            print(f"  {run_id}: {what}" + (f" ({detail})" if detail else ""))


def _mean_std(values):
    """Mean and sample standard deviation; no deviation (None) from a single seed, not a false 0."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, std


@contextlib.contextmanager
def results_lock(folder):
    """Sweep processes sharing a folder (shards, array tasks) check, write and record its results one
    at a time: another's write, not yet recorded, must not look like a file the user changed."""
    with open(os.path.join(folder, LOCK_NAME), "a+") as f:   # a run folder's lock's name: never the user's
        fcntl.flock(f, fcntl.LOCK_EX)            # released when the file closes
        yield


def aggregate(spec, folder, commands, failed=None):
    """Group runs that differ only by seed; write results.csv, results.md, results.png and curves.png
    (test accuracy and R_s per epoch of each group: the mean over its seeds and their range). Failed runs ({run_id: exit
    status}) are listed under the table and named on the figure."""
    failed = failed or {}
    varied = varied_settings(commands) - {"seed"}
    groups = {}
    for run_id, label, settings, _ in commands:
        summary = finished_summary(folder, run_id)
        if summary is None:
            continue
        summary["generalization_gap"] = summary["final_train_acc"] - summary["last_test_acc"]
        key = tuple((k, text_of(v)) for k, v in settings.items() if k in varied)
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
    with results_lock(folder):
        return _write_results(spec, folder, rows, groups, failed)


def _write_results(spec, folder, rows, groups, failed):
    """results.csv, results.md (and the figures) from the rows; the caller holds results_lock."""
    names = result_files(spec)
    claim(folder, names, "--root")          # a file of the user's (or one changed since) is never replaced
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
        curves = {g["label"] or " ".join(f"{k}={v}" for k, v in g["settings"].items()) or "run": g["runs"]
                  for g in groups.values()}
        sweep_curves(curves, os.path.join(folder, "curves.png"), title)
    record_drawn(folder, names)             # what each holds now: a later change is the user's
    print(table)
    print(f"wrote {folder}/results.csv, results.md" + (", results.png, curves.png" if spec.get("plot") else ""))
    return rows


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
            cells.append("" if mean is None else f"{mean:.4f}" + ("" if std is None else f" +- {std:.4f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
