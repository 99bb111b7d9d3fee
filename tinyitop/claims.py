"""Claiming a sweep's runs, so that many sweep processes (on one machine or on several sharing a
filesystem) train each run exactly once.

A run is claimed by creating RUN/.claim-G with O_EXCL: of two processes, exactly one succeeds. The
file holds the claimer's host, PID and start time; the claimer touches it every HEARTBEAT_SECONDS
while the run trains. A claim is stale when its sweep is gone: on the same host, its PID is dead and
nobody holds the run folder's lock (its training has stopped too); on another host, its heartbeat is
older than stale_after seconds. A stale claim G is taken over by creating .claim-(G+1), again with
O_EXCL, so that two processes that both judge G stale cannot both take it; the winner removes the
older generations and resumes the run from its checkpoint. A claimer that finds a newer generation
than its own at a heartbeat has been taken over (it was judged dead) and stops its run.

On NFS, O_EXCL creation is atomic from NFSv3 on (Linux clients), so the claim itself holds; what a
shared filesystem does not give is a shared clock or shared PIDs: another host's claim is judged by
its heartbeat's age alone, so hosts' clocks must agree within a fraction of stale_after.
"""
import fcntl
import json
import os
import re
import socket
import threading
import time

from tinyitop.atomic import parse_json

HEARTBEAT_SECONDS = 30
STALE_AFTER_SECONDS = 600         # another host's claim without a heartbeat for this long is taken over
_CLAIM = re.compile(r"\.claim-(\d+)")


def generations(run_folder):
    """{generation: path} of the claim files in a run folder."""
    try:
        names = os.listdir(run_folder)
    except FileNotFoundError:
        return {}
    return {int(m.group(1)): os.path.join(run_folder, name) for name in names if (m := _CLAIM.fullmatch(name))}


def read_claim(path):
    """The claim's holder {host, pid, started} and heartbeat age (s), or None if it vanished or is torn."""
    try:
        with open(path, encoding="utf-8") as f:
            holder = parse_json(f.read(), path)
        age = time.time() - os.stat(path).st_mtime
    except (OSError, ValueError):
        return None
    return {**holder, "age": age} if isinstance(holder, dict) else None


def _pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True                     # another user's process, or an odd PID: not ours to judge dead
    return True


def _folder_locked(run_folder):
    """Whether a training process holds the run folder's lock (rundir.RunFolder's flock)."""
    try:
        with open(os.path.join(run_folder, ".lock"), "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def state(run_folder, stale_after=STALE_AFTER_SECONDS):
    """("free", None), ("running", holder) or ("stale", holder) of a run folder's newest claim."""
    claims = generations(run_folder)
    if not claims:
        return "free", None
    holder = read_claim(claims[max(claims)])
    if holder is None:              # torn (killed mid-write) or removed this instant: judge by its age
        try:
            age = time.time() - os.stat(claims[max(claims)]).st_mtime
        except OSError:
            return "free", None
        return ("stale" if age > HEARTBEAT_SECONDS * 2 else "running"), {"host": "?", "pid": "?", "age": age}
    if holder.get("host") == socket.gethostname():
        gone = not _pid_alive(holder.get("pid")) and not _folder_locked(run_folder)
    else:
        gone = holder["age"] > stale_after
    return ("stale" if gone else "running"), holder


class Claim:
    """A held claim on one run: `heartbeat()` in a thread while it trains, `release()` when done."""

    def __init__(self, run_folder, generation):
        self.run_folder, self.generation = run_folder, generation
        self.path = os.path.join(run_folder, f".claim-{generation}")
        self._stop = threading.Event()
        self._thread = None

    def lost(self):
        """Whether another process has taken this run over (a newer claim generation exists)."""
        return max(generations(self.run_folder), default=self.generation) > self.generation

    def start_heartbeat(self, on_lost, interval=HEARTBEAT_SECONDS):
        """Touch the claim every `interval` seconds; call on_lost() once if the run was taken over."""
        def beat():
            while not self._stop.wait(interval):
                if self.lost():
                    on_lost()
                    return
                try:
                    os.utime(self.path)
                except OSError:
                    pass
        self._thread = threading.Thread(target=beat, daemon=True)
        self._thread.start()

    def release(self):
        """Stop the heartbeat and remove the claim (only our own generation: a newer one is another's)."""
        self._stop.set()
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


def try_claim(run_folder, stale_after=STALE_AFTER_SECONDS):
    """A Claim on the run if it is free or stale and this process wins it, else None."""
    os.makedirs(run_folder, exist_ok=True)
    current, _ = state(run_folder, stale_after)
    if current == "running":
        return None
    generation = max(generations(run_folder), default=0) + 1
    path = os.path.join(run_folder, f".claim-{generation}")
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None                              # another process claimed it first
    with os.fdopen(fd, "w") as f:
        json.dump(holder, f)
        f.flush()
        os.fsync(f.fileno())
    for older, older_path in generations(run_folder).items():
        if older < generation:                   # the stale claims we replaced
            try:
                os.remove(older_path)
            except FileNotFoundError:
                pass
    return Claim(run_folder, generation)
