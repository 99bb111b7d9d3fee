"""Metrics as JSON lines: one object per epoch (metrics.jsonl) and per topology update (updates.jsonl).

Values are accumulated on the device during an epoch and brought to the host once (`# sync point`).
"""
import json
import math
import os
import sys

try:
    import resource          # Unix only; peak memory is then not reported
except ImportError:
    resource = None

from tinyitop.atomic import atomic_write, parse_json


def _clean(value):
    """JSON-safe: NaN/inf become null (json.dumps would write invalid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


NUMBER, OPTIONAL_NUMBER = (int, float), (int, float, type(None))
# What the readers of each log use from a row (resume, summary, figures, sweeps), and its JSON type:
# a row read back is checked against it, so a damaged row is one line naming the file, not a crash.
EPOCH_FIELDS = {"epoch": int, "iteration": int, "lr": NUMBER, "prune_rate": NUMBER, "train_loss": NUMBER,
                "train_acc": NUMBER, "val_loss": OPTIONAL_NUMBER, "val_acc": OPTIONAL_NUMBER, "test_loss": NUMBER,
                "test_acc": NUMBER, "rs": NUMBER, "rs_reliable": NUMBER, "train_flops_rel": NUMBER,
                "test_flops_rel": NUMBER, "nnz_per_layer": dict, "density_per_layer": dict, "rs_per_layer": dict,
                "rs_reliable_per_layer": dict}
UPDATE_FIELDS = {"iteration": int, "epoch": int, "prune_rate": NUMBER, "rs": NUMBER, "rs_reliable": NUMBER,
                 "rs_per_layer": dict}


def check_row(row, fields, where, remedy="use --overwrite to start the run again"):
    """Raise ValueError naming `where` (file and line) when a row is not a dict with `fields`."""
    if not isinstance(row, dict):
        raise ValueError(f"{where} is not a JSON object: the file is damaged; {remedy}")
    for name, kinds in fields.items():
        value = row.get(name, KeyError)
        if value is KeyError or isinstance(value, bool) or not isinstance(value, kinds) or (
                isinstance(value, float) and not math.isfinite(value)):
            what = "has no" if value is KeyError else f"has a bad value ({json.dumps(value)[:40]}) for"
            raise ValueError(f"{where} {what} {name!r}: the file is damaged; {remedy}")


class JsonLines:
    """A JSON-lines log: one row per line, appended and fsynced. `before_create` runs before the file
    is first created (the run folder records it as the run's); `fields`, if given, is what every row
    read back must hold (check_row)."""

    def __init__(self, path, before_create=None, fields=None):
        self.path, self.before_create, self.fields = path, before_create, fields

    def append(self, row):
        if self.before_create is not None and not os.path.exists(self.path):
            self.before_create()
        with open(self.path, "a") as f:
            f.write(json.dumps(_clean(row)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self, drop_torn_last=False, log=print):
        """The rows. A line that is not JSON is an error naming the file and line, except a torn last
        line (a crash mid-write) when `drop_torn_last`: it is dropped with a warning."""
        if not os.path.exists(self.path):
            return []
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.readlines()
        except UnicodeDecodeError:
            raise ValueError(f"{self.path} is not text (UTF-8): the file is damaged; "
                             "use --overwrite to start the run again") from None
        rows = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = parse_json(line, f"{self.path} line {number}")
            except ValueError as err:                     # not JSON (a torn line), or nested too deeply
                if drop_torn_last and number == len(lines):
                    log(f"warning: dropped the torn last line of {self.path} (written when a run was killed)")
                    break
                why = err.msg if isinstance(err, json.JSONDecodeError) else "nested too deeply"
                raise ValueError(f"{self.path} line {number} is not valid JSON ({why}); "
                                 f"remove that line, or use --overwrite to start the run again") from None
            if self.fields is not None:
                check_row(row, self.fields, f"{self.path} line {number}")
            rows.append(row)
        return rows

    def rewrite(self, rows):
        """Replace the log by `rows` (on resume: without the rows after the checkpoint). A log not yet
        written stays unwritten: only `append` creates the file, after `before_create`."""
        if os.path.exists(self.path):
            atomic_write(self.path, lambda f: f.writelines((json.dumps(row) + "\n").encode() for row in rows))


def read_jsonl(path, fields=None):
    """The rows of a JSON-lines log ([] if it does not exist); with `fields`, each row checked."""
    return JsonLines(path, fields=fields).read()


# Fields of an epoch's row that measure the machine, not the experiment: they differ between two
# runs of the same settings (a resumed run and an uninterrupted one agree on everything else).
TIMING_FIELDS = ("seconds", "train_seconds", "samples_per_s", "peak_rss_mb")


def peak_rss_mb():
    """Largest resident memory of this process so far, in MB (None where unknown)."""
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if os.uname().sysname == "Darwin" else peak / 1024     # bytes on macOS, KiB on Linux


def format_rs(value):
    """R_s with four decimals; a very sparse net (a million neurons: R_s ~ 4e-5) in significant digits."""
    return f"{value:.4f}" if value >= 1e-3 or value == 0 else f"{value:.3g}"


def format_epoch(row):
    """The line printed after each epoch."""
    val = "" if row.get("val_acc") is None else f"  val {row['val_acc']:.4f}"
    test = "" if row.get("test_acc") is None else f" test {row['test_acc']:.4f}"
    return (f"epoch {row['epoch']:3d}  lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  "
            f"train {row['train_acc']:.4f}{val}{test}  "
            f"R_s {format_rs(row['rs'])} (reliable {format_rs(row['rs_reliable'])})  "
            f"{row['seconds']:.1f}s  {row['samples_per_s']:.0f} samples/s")


def progress(iterable, total, enabled, description, unit="batch"):
    """A tqdm bar over `iterable` when enabled, tqdm is installed and stderr is a terminal (into a
    pipe or a file, `| tee` or a job's log, a bar would be hundreds of carriage-return updates)."""
    if not enabled or not sys.stderr.isatty():
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=description, leave=False, unit=unit)
