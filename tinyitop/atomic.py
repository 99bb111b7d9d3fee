"""Atomic file writes: a file tinyitop writes is either its old content or its new one, never half.

A killed run, a full disk or Ctrl-C mid-write leaves the previous checkpoint, log or table intact.
Reading them back: `parse_json`, for every JSON text tinyitop reads.
"""
import json
import os


def check_target(path, overwrite=False, suffix=None, overwrite_option="--overwrite", create_folder=True):
    """Refuse, before any work, a file that cannot or must not be written at `path`: a folder, one in
    a folder that cannot be created (or, unless `create_folder`, does not exist) or written, the wrong
    suffix, or (unless `overwrite`) a file that exists already; `overwrite_option` is the option that
    would replace it (None: a command that never replaces a file). Raises ValueError or OSError,
    naming the path."""
    if suffix and not path.endswith(suffix):
        raise ValueError(f"{path}: the file to write must end in {suffix}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder: give the path of a file to write")
    if os.path.exists(path) and not overwrite:
        how = f", or {overwrite_option} to replace it" if overwrite_option else " (nothing is overwritten)"
        raise FileExistsError(f"{path} exists already: give another path{how}")
    folder = os.path.dirname(os.path.abspath(path))
    if not create_folder and not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist")
    existing = folder
    while not os.path.isdir(existing):          # the nearest folder that exists: where it would be created
        if os.path.exists(existing):
            raise NotADirectoryError(f"cannot write {path}: {existing} is a file, not a folder")
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: the folder {existing} is not writable")


def atomic_write(path, write):
    """Call write(file) on a temporary file, fsync, then rename over `path` (atomic on POSIX)."""
    if os.path.isdir(path):                     # else the rename fails naming the temporary file
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
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


def parse_json(text, where):
    """json.loads, where JSON nested too deeply for Python's parser is a ValueError naming `where`
    (json raises RecursionError there, which no reader expects): every reader's `except ValueError`
    then covers it, as it covers json's own JSONDecodeError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(f"{where} is not valid JSON: nested too deeply") from None
