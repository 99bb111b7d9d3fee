"""Atomic file writes: a file tinyitop writes is either its old content or its new one, never half.

A killed run, a full disk or Ctrl-C mid-write leaves the previous checkpoint, log or table intact.
"""
import os


def atomic_write(path, write):
    """Call write(file) on a temporary file, fsync, then rename over `path` (atomic on POSIX)."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.tinyitop-partial-{os.getpid()}")   # a name no user picks
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):        # a full disk or Ctrl-C mid-write leaves nothing behind
            os.remove(tmp)
        raise
