"""The run folder's rules, in one place, so that train() shows the training loop and nothing else.

A run writes metrics.jsonl, updates.jsonl, checkpoint.npz, summary.json (and init.npz, figures, a
demo's report.md, an LTH run's dense/ twin) into its --out folder. The rules that keep that folder whole:
- one writer at a time: an OS lock (flock) on OUT/.lock, released when the process dies;
- a fresh run never mixes with an old one: it refuses a folder that holds a run unless told
  to --overwrite (then the old run's files go first, together) or to --resume it;
- only what tinyitop wrote is ever deleted: a manifest (OUT/.tinyitop-run) lists the names a run
  claimed; --overwrite removes those and nothing else, and a file of the user's that a run would
  overwrite is refused, not replaced; a finished run is never wiped by --resume;
- what a crash leaves behind is cleaned on the next start: orphan temporary files (named
  .NAME.tinyitop-partial-PID, matched exactly), and a torn last line of a JSON-lines log (dropped
  with a warning on resume);
- every file is written atomically (temporary file, fsync, rename).
"""
import errno
import fcntl
import json
import os
import re
import shutil

RUN_FILES = ("metrics.jsonl", "updates.jsonl", "checkpoint.npz", "summary.json", "init.npz",
             "training.png", "exploration.png", "mask_evolution.png", "report.md")
RUN_FOLDERS = ("dense",)          # LTH trains its dense twin here
LOCK_NAME = ".lock"
MANIFEST_NAME = ".tinyitop-run"    # {"claimed": [names]}: what this folder's run may write and delete
RUN_MARKERS = ("metrics.jsonl", "checkpoint.npz", "summary.json")   # a folder with one of these holds a run
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.tinyitop-partial-\d+")


class RunFolderError(ValueError):
    """The --out folder cannot be used as asked (busy, holds another run, not writable)."""


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


def lock(file, busy_message):
    """flock an open file without waiting and write our PID into it; the lock lives while the file
    is open (and dies with the process). If another process holds it: RunFolderError(busy_message
    with {pid} filled in)."""
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        file.seek(0)
        holder = file.read().strip() or "unknown"
        file.close()
        raise RunFolderError(busy_message.format(pid=holder)) from None
    file.seek(0)
    file.truncate()
    file.write(str(os.getpid()))
    file.flush()
    return file


def write_json(path, value):
    atomic_write(path, lambda f: f.write(json.dumps(value, indent=2).encode()))


def _is_temporary(filename):
    """An atomic_write leftover for one of a run's files: exactly .NAME.tinyitop-partial-PID."""
    match = _TEMPORARY.fullmatch(filename)
    return bool(match) and match.group("name") in RUN_FILES + (MANIFEST_NAME,)


def _holds_run(folder):
    return any(os.path.exists(os.path.join(folder, n)) for n in RUN_MARKERS)


class RunFolder:
    """`RunFolder(out).open(resume, overwrite, log)` before training; the lock lives as long as the object."""

    def __init__(self, out):
        self.out = out
        self._lock_file = None

    def path(self, name):
        return os.path.join(self.out, name)

    @property
    def checkpoint(self):
        return self.path("checkpoint.npz")

    def open(self, resume=False, overwrite=False, log=print):
        """Create/lock the folder and make it ready for a fresh run or a resume; returns whether a
        checkpoint will be resumed."""
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise RunFolderError(f"--out {self.out} is a file, not a folder: choose another --out")
        try:
            os.makedirs(self.out, exist_ok=True)
            self._lock_file = open(self.path(LOCK_NAME), "a+")
        except OSError as err:
            raise RunFolderError(f"cannot write to --out {self.out} ({err.strerror}): choose a writable folder") from None
        self._lock_file = lock(self._lock_file, f"another run (PID {{pid}}) is writing to {self.out}: wait for it "
                                                f"to finish or choose another --out")
        self._remove_temporary_files(log)
        if resume and os.path.exists(self.checkpoint):
            return True
        existing = self.run_files()
        if existing and not (overwrite or resume):
            hint = "--resume to continue it or " if os.path.exists(self.checkpoint) else ""
            raise RunFolderError(f"{self.out} already holds a run ({', '.join(existing)}): use {hint}"
                                 f"--overwrite to replace it, or choose another --out")
        if resume and not overwrite:
            self._refuse_to_restart_a_logged_run()
        owned = self._owned()
        foreign = [n for n in existing if n not in owned and not os.path.isdir(self.path(n))]
        if foreign:
            raise RunFolderError(f"{self.out} holds {', '.join(foreign)}, which tinyitop did not write and a run "
                                 f"would replace: move {'them' if len(foreign) > 1 else 'it'} or choose another --out")
        # --overwrite, or --resume of a run killed before its first checkpoint: start clean. The
        # latter keeps LTH's dense twin, which resumes from its own checkpoint.
        for name in existing if overwrite else [n for n in existing if n not in RUN_FOLDERS]:
            if name not in owned:
                continue                      # e.g. a dense/ folder of the user's: never ours to delete
            target = self.path(name)
            shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
        claimed = [n for n in RUN_FILES + RUN_FOLDERS if n in owned or not os.path.exists(self.path(n))]
        write_json(self.path(MANIFEST_NAME), {"claimed": claimed})
        if resume:
            log(f"--resume: no checkpoint in {self.out}, starting from scratch")
        return False

    def _owned(self):
        """Names in this folder that a tinyitop run wrote: the files its manifest claims (for a
        folder written before manifests existed: the run's files, if it holds a run), and dense/
        only if it holds LTH's twin (its own manifest or run files), whoever made a folder of that name."""
        try:
            with open(self.path(MANIFEST_NAME)) as f:
                claimed = set(json.load(f)["claimed"])
        except (OSError, ValueError, KeyError, TypeError):
            claimed = set(RUN_FILES) if _holds_run(self.out) else set()
        twins = {n for n in RUN_FOLDERS
                 if _holds_run(self.path(n)) or os.path.exists(os.path.join(self.path(n), MANIFEST_NAME))}
        return (claimed - set(RUN_FOLDERS)) | twins

    def _refuse_to_restart_a_logged_run(self):
        """--resume without a checkpoint restarts a run killed before its first one; a run that got
        further (finished, or with logged epochs) lost its checkpoint, and starting over would wipe it."""
        finished = os.path.exists(self.path("summary.json"))
        try:
            with open(self.path("metrics.jsonl")) as f:
                logged = sum(1 for line in f if line.endswith("\n"))
        except OSError:
            logged = 0
        if finished or logged:
            what = "a finished run (summary.json)" if finished else f"a run with {logged} logged epoch(s)"
            raise RunFolderError(f"--resume: {self.out} holds {what} but no checkpoint.npz, so it cannot be "
                                 "continued; --overwrite replaces it (or choose another --out)")

    def run_files(self):
        return [n for n in RUN_FILES + RUN_FOLDERS if os.path.exists(self.path(n))]

    def _remove_temporary_files(self, log):
        """Orphans of a crash mid-write (checkpoint.npz.tmp1234, metrics.jsonl.tmp): safe to remove
        because we hold the lock, so no other process is writing them."""
        orphans = [n for n in os.listdir(self.out) if _is_temporary(n)]
        for name in orphans:
            os.remove(self.path(name))
        if orphans:
            log(f"removed {len(orphans)} temporary file(s) left by an interrupted run in {self.out}")

    def close(self):
        if self._lock_file is not None:
            self._lock_file.close()       # releases the flock
            self._lock_file = None
