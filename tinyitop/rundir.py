"""The run folder's rules, in one place, so that train() shows the training loop and nothing else.

A run writes metrics.jsonl, updates.jsonl, checkpoint.npz, summary.json (and init.npz, figures, a
demo's report.md, an LTH run's dense/ twin) into its --out folder. The rules that keep that folder whole:
- one writer at a time: an OS lock (flock) on OUT/.lock, released when the process dies;
- a fresh run never mixes with an old one: it refuses a folder that holds a run unless told
  to --overwrite (then the old run's files go first, together) or to --resume it;
- only what tinyitop wrote is ever deleted or replaced: a manifest (OUT/.tinyitop-run) lists each
  file a run wrote, recorded just before it first writes it (`claim`); --overwrite removes those and
  nothing else. A run-file name in the folder that no manifest accounts for (the user's own
  training.png, say, or a folder without a manifest) is refused in one line, never replaced, unless
  its content shows tinyitop wrote it (logs, checkpoint, summary); a finished run is never wiped by
  --resume; the figures and report a run drew are recorded with their content (sha256), so one
  the user saved under the same name since is refused, never deleted or replaced;
- what a crash leaves behind is cleaned on the next start: orphan temporary files (named
  .NAME.tinyitop-partial-PID, matched exactly), and a torn last line of a JSON-lines log (dropped
  with a warning on resume);
- every file is written atomically (temporary file, fsync, rename).
"""
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil

from tinyitop.atomic import atomic_write, parse_json
from tinyitop.checkpoint import read_meta

RUN_FILES = ("metrics.jsonl", "updates.jsonl", "checkpoint.npz", "summary.json", "init.npz",
             "training.png", "exploration.png", "mask_evolution.png", "mask_evolution.gif", "report.md")
RUN_FOLDERS = ("dense",)          # LTH trains its dense twin here
LOCK_NAME = ".lock"
MANIFEST_NAME = ".tinyitop-run"    # {"written": [names], "drawn": {name: sha256}}: what this folder's run
                                   # wrote (may delete), and what its figures and report held when drawn
RUN_MARKERS = ("metrics.jsonl", "checkpoint.npz", "summary.json")   # a folder with one of these holds a run
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.tinyitop-partial-\d+")


class RunFolderError(ValueError):
    """The --out folder cannot be used as asked (busy, holds another run, not writable)."""


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


def _manifest(folder):
    """The folder's manifest as a dict ({} when absent or unreadable)."""
    try:
        with open(os.path.join(folder, MANIFEST_NAME)) as f:
            manifest = parse_json(f.read(), MANIFEST_NAME)
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _looks_like_ours(path):
    """Whether a run-file name's content is a tinyitop run's: JSON-lines logs whose first row has
    tinyitop's keys, a summary.json with its config and R_s, a checkpoint whose meta reads."""
    name = os.path.basename(path)
    keys = {"metrics.jsonl": {"epoch", "rs"}, "updates.jsonl": {"iteration", "rs"}, "summary.json": {"config", "final_rs"}}
    try:
        if name in keys:
            with open(path, encoding="utf-8") as f:
                first = parse_json(f.readline() if name.endswith(".jsonl") else f.read(), path)
            return isinstance(first, dict) and keys[name] <= set(first)
        if name == "checkpoint.npz":
            read_meta(path)
            return True
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return False


def claim(folder, names, option="--out"):
    """`RunFolder.claim` for files written after the run's folder was closed (its figures, a demo's
    report, a sweep's results): refuses a name that exists and that the manifest does not record, or
    whose content changed since tinyitop drew it (the user's own figure in its place), then records it."""
    manifest = _manifest(folder)
    written = manifest.get("written") if isinstance(manifest.get("written"), list) else []
    foreign = [n for n in names if n not in written and os.path.exists(os.path.join(folder, n))]
    if foreign:
        them = "them" if len(foreign) > 1 else "it"
        raise RunFolderError(f"{folder} holds {', '.join(foreign)}, which tinyitop has no record of writing: not "
                             f"replaced; if yours, move {them} elsewhere; if an older tinyitop wrote {them} (it kept "
                             f"no such record), delete {them}; then run the command again, or choose another {option}")
    _refuse_changed(folder, [n for n in names if n in written], option)
    _write_manifest(folder, written + [n for n in names if n not in written])


def record_drawn(folder, names):
    """After a run's figures or report are written: record what each holds (sha256), so that a file
    the user puts in its place later is recognised as theirs and never deleted or replaced."""
    manifest = _manifest(folder)
    drawn = _drawn(manifest)
    drawn.update({n: _digest(os.path.join(folder, n)) for n in names})
    write_json(os.path.join(folder, MANIFEST_NAME), {**manifest, "drawn": drawn})


def _drawn(manifest):
    drawn = manifest.get("drawn")
    return {n: d for n, d in drawn.items() if isinstance(d, str)} if isinstance(drawn, dict) else {}


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _refuse_changed(folder, names, option="--out"):
    """Refuse when a drawn file among `names` no longer holds what tinyitop drew."""
    drawn = _drawn(_manifest(folder))
    changed = [n for n in names if n in drawn and os.path.isfile(os.path.join(folder, n))
               and _digest(os.path.join(folder, n)) != drawn[n]]
    if changed:
        them = "them" if len(changed) > 1 else "it"
        raise RunFolderError(f"{folder} holds {', '.join(changed)}, changed since tinyitop drew {them}: not deleted or "
                             f"replaced; if yours, move {them} elsewhere (or delete {them} to let a run draw {them} "
                             f"again), or choose another {option}")


def _write_manifest(folder, written):
    """The manifest with `written`, keeping the drawn records of the names still written (not
    rewritten when that is what it holds already: a refused command leaves the folder as it was)."""
    old = _manifest(folder)
    drawn = {n: d for n, d in _drawn(old).items() if n in written}
    new = {"written": written, **({"drawn": drawn} if drawn else {})}
    if new != old:
        write_json(os.path.join(folder, MANIFEST_NAME), new)


class RunFolder:
    """`RunFolder(out).open(resume, overwrite, log)` before training; the lock lives as long as the object."""

    def __init__(self, out):
        self.out = out
        self._lock_file = None
        self._written = []

    def path(self, name):
        return os.path.join(self.out, name)

    @property
    def checkpoint(self):
        return self.path("checkpoint.npz")

    def open(self, resume=False, overwrite=False, log=print):
        """Create/lock the folder and make it ready for a fresh run or a resume; returns whether a
        checkpoint will be resumed."""
        if os.path.islink(self.out) and not os.path.exists(self.out):
            raise RunFolderError(f"--out {self.out} is a broken symbolic link (to {os.readlink(self.out)}): "
                                 "remove it, point it at a folder, or choose another --out")
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
        existing, owned = self.run_files(), self._owned()
        misplaced = [n for n in existing if os.path.isdir(self.path(n)) != (n in RUN_FOLDERS)]
        if misplaced:                   # a folder where a run writes a file (or the reverse): never tinyitop's
            kind = "a folder" if os.path.isdir(self.path(misplaced[0])) else "a file"
            raise RunFolderError(f"{self.out} holds {kind} named {misplaced[0]}, where a run keeps its "
                                 f"{'folder' if kind == 'a file' else 'file'} of that name: it is not tinyitop's "
                                 "(never deleted): move it elsewhere, or choose another --out")
        foreign = [n for n in existing if n not in owned and not os.path.isdir(self.path(n))]
        if foreign:
            them = "them" if len(foreign) > 1 else "it"
            raise RunFolderError(f"{self.out} holds {', '.join(foreign)}, which tinyitop has no record of writing "
                                 f"(not in {MANIFEST_NAME}) and a run could replace: if yours, move {them} elsewhere; "
                                 f"if an older tinyitop drew {them} (it kept no such record), delete {them}; or choose "
                                 "another --out")
        _refuse_changed(self.out, [n for n in existing if n in owned])
        if resume and os.path.exists(self.checkpoint):
            recorded = _manifest(self.out).get("written")
            recorded = recorded if isinstance(recorded, list) else []
            self._written = [n for n in recorded if n in existing and n in owned] + [
                n for n in existing if n in owned and n not in recorded]      # the manifest's order kept
            _write_manifest(self.out, self._written)
            return True
        if existing and not (overwrite or resume):
            hint = "--resume to continue it or " if os.path.exists(self.checkpoint) else ""
            raise RunFolderError(f"{self.out} already holds a run ({', '.join(existing)}): use {hint}"
                                 f"--overwrite to replace it, or choose another --out")
        if resume and not overwrite:
            self._refuse_to_restart_a_logged_run()
        # --overwrite, or --resume of a run stopped before its first checkpoint: start clean. The
        # latter keeps LTH's dense twin, which resumes from its own checkpoint.
        for name in (n for n in existing if n in RUN_FOLDERS and n in owned and overwrite):
            twin = RunFolder(self.path(name))                # removed whole below: only if all of it is a run's
            extra = sorted(set(os.listdir(twin.out)) - twin._owned() - {LOCK_NAME, MANIFEST_NAME})
            if extra:
                raise RunFolderError(f"{twin.out} (LTH's dense twin, which --overwrite replaces) also holds "
                                     f"{', '.join(extra[:3])}, which tinyitop has no record of writing: if yours, "
                                     "move it elsewhere, or choose another --out")
        kept = []
        for name in existing:
            if name not in owned or (name in RUN_FOLDERS and not overwrite):
                kept += [name] if name in owned else []       # a dense/ folder of the user's: never ours
                continue
            target = self.path(name)
            shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
        self._written = kept
        _write_manifest(self.out, self._written)
        if resume:
            log(f"--resume: no checkpoint in {self.out}, starting from scratch")
        return False

    def claim(self, name):
        """Record `name` in the manifest before the run first writes it (so that --overwrite may later
        remove it); a no-op once recorded. `open` has already refused any such file of the user's."""
        if name not in self._written:
            self._written = self._written + [name]
            _write_manifest(self.out, self._written)

    def _owned(self):
        """Names in this folder that a tinyitop run wrote: those its manifest records as written;
        without one (or with an older manifest, which listed names in advance), only the logs,
        checkpoint and summary whose content shows they are a tinyitop run's; and dense/ only if it
        holds LTH's twin (its own manifest or run files), whoever made a folder of that name."""
        written = _manifest(self.out).get("written")
        if not isinstance(written, list):
            written = [n for n in RUN_FILES if _looks_like_ours(self.path(n))]
        twins = {n for n in RUN_FOLDERS
                 if _holds_run(self.path(n)) or os.path.exists(os.path.join(self.path(n), MANIFEST_NAME))}
        return (set(written) - set(RUN_FOLDERS)) | twins

    def _refuse_to_restart_a_logged_run(self):
        """--resume without a checkpoint restarts a run killed before its first one; a run that got
        further (finished, or with logged epochs) lost its checkpoint, and starting over would wipe it."""
        finished = os.path.exists(self.path("summary.json"))
        try:
            with open(self.path("metrics.jsonl")) as f:
                logged = sum(1 for line in f if line.endswith("\n"))
        except OSError:
            logged = 0
        # One logged epoch and no checkpoint: stopped while writing its first checkpoint (the row is
        # logged first), so there is nothing to continue and nothing of value lost: start clean.
        if finished or logged > 1:
            what = "a finished run (summary.json)" if finished else f"a run with {logged} logged epoch(s)"
            raise RunFolderError(f"--resume: {self.out} holds {what} but no checkpoint.npz, so it cannot be "
                                 "continued; --overwrite replaces it (or choose another --out)")

    def run_files(self):
        return [n for n in RUN_FILES + RUN_FOLDERS if os.path.exists(self.path(n))]

    def _remove_temporary_files(self, log):
        """Orphans of a crash mid-write (checkpoint.npz.tmp1234, metrics.jsonl.tmp): safe to remove
        because we hold the lock, so no other process is writing them."""
        orphans = [n for n in os.listdir(self.out) if _is_temporary(n) and os.path.isfile(self.path(n))]
        for name in orphans:
            os.remove(self.path(name))
        if orphans:
            log(f"removed {len(orphans)} temporary file(s) left by an interrupted run in {self.out}")

    def close(self):
        if self._lock_file is not None:
            self._lock_file.close()       # releases the flock
            self._lock_file = None
