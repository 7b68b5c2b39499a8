"""One writer per run directory: an exclusive lock held for the whole run.

The lock is `.lock` in the run directory, locked with flock(2) while the writing process lives
(the kernel drops it when the process dies, however it dies) and holding that process's pid,
host and start time, so that a refused second writer can name the holder. A lock file left by a
dead process is not held: the next run takes it over and says so. Released, the file stays (empty).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from harness.bench.results import ResultsError

LOCK_NAME = ".lock"


def holder(out: Path) -> dict | None:
    """Who holds the lock of run directory `out` now ({pid, host, since}), or None when no live
    process holds it (no lock file, or one left by a dead process)."""
    path = out / LOCK_NAME
    if not path.exists():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # succeeds only when no writer holds it
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return _read(path)
    finally:
        os.close(fd)


def refusal(out: Path, who: dict) -> ResultsError:
    return ResultsError(f"{out} is being written by another run (pid {who.get('pid')} on {who.get('host')}, "
                        f"since {who.get('since')}); wait for it to finish or choose another --out")


class RunLock:
    """`with RunLock(out):` the run directory is this process's until the block ends."""

    def __init__(self, out: Path):
        self.out, self.path, self._fd = out, out / LOCK_NAME, None

    def acquire(self) -> "RunLock":
        self.out.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise refusal(self.out, _read(self.path) or {}) from None
        stale = _read(self.path)
        if stale and stale.get("pid") != os.getpid():
            print(f"spec-harness: {self.out}: took over the lock left by pid {stale.get('pid')} on "
                  f"{stale.get('host')} (that process is gone)", file=sys.stderr)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the lock file and let go. The file stays: unlinking it would let a process that
        opened it a moment before lock a file no longer in the directory while a third made a new one."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __del__(self) -> None:
        self.release()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
