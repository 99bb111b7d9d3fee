"""Metrics as JSON lines: one object per epoch (metrics.jsonl) and per topology update (updates.jsonl).

Values are accumulated on the device during an epoch and brought to the host once (`# sync point`).
"""
import json
import math
import os


def _clean(value):
    """JSON-safe: NaN/inf become null (json.dumps would write invalid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


class JsonLines:
    def __init__(self, path):
        self.path = path

    def append(self, row):
        with open(self.path, "a") as f:
            f.write(json.dumps(_clean(row)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self):
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def truncate(self, keep):
        """Keep only rows for which keep(row) is true (on resume: drop rows after the checkpoint)."""
        rows = [row for row in self.read() if keep(row)]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        os.replace(tmp, self.path)


def read_jsonl(path):
    return JsonLines(path).read()


def format_epoch(row):
    """The line printed after each epoch."""
    val = "" if row.get("val_acc") is None else f"  val {row['val_acc']:.4f}"
    test = "" if row.get("test_acc") is None else f" test {row['test_acc']:.4f}"
    return (f"epoch {row['epoch']:3d}  lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  "
            f"train {row['train_acc']:.4f}{val}{test}  "
            f"R_s {row['rs']:.4f} (reliable {row['rs_reliable']:.4f})  "
            f"{row['seconds']:.1f}s  {row['samples_per_s']:.0f} samples/s")
