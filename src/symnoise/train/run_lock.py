"""The lock that keeps one run per run directory.

`RunLock` holds an exclusive ``flock`` on ``RUN/symnoise.lock`` for the whole run and writes its PID, host and
start time into it. The OS drops the lock when the process dies (``kill -9`` included), so a lock file left by a
killed run is taken over, with a log line naming the old holder. A second run into the same directory is refused
with the holder's PID and host. ``flock`` works across processes on one machine and, on Linux NFS, across
machines (it is mapped to POSIX locks there); on a file system without locks the PID record alone is checked.
The record is written through the locked descriptor itself (never replaced by a rename, which would drop the
lock's file from under it).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..layout import RunLayout
from .config import ConfigError

logger = logging.getLogger("symnoise.train")


class RunLockedError(ConfigError):
    """Another process holds the run directory's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder_text(holder: dict[str, Any]) -> str:
    return (
        f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
        f"{holder.get('started_at', 'at an unknown time')}"
    )


class RunLock:
    """An exclusive lock on ``RUN/symnoise.lock`` held while a run writes into ``RUN``; see the module docstring."""

    def __init__(self, run_dir: Path):
        self.path = RunLayout(run_dir).lock
        self.fd: int | None = None
        self.created = False  # this process made the lock file (so a refused run can leave no trace)

    def _read_holder(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
            holder = json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def acquire(self) -> RunLock:
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": started_at}
        self.created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked_by_os = self._flock(fd)
        except BaseException:
            os.close(fd)
            raise
        previous = self._read_holder()
        if not locked_by_os and previous and previous.get("pid") != me["pid"]:
            alive = previous.get("host") != me["host"] or _pid_alive(int(previous.get("pid", 0)))
            if alive:
                os.close(fd)
                raise RunLockedError(
                    f"training.output_dir: {self.path.parent} is in use by another symnoise run "
                    f"({_holder_text(previous)}); this file system has no locks, so if that run has ended, "
                    f"delete {self.path} and retry"
                )
        if previous:
            logger.warning(
                "took over the lock %s left by a run that is no longer running (%s)",
                self.path,
                _holder_text(previous),
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def _flock(self, fd: int) -> bool:
        """True when the OS lock is held; False when the file system has none; raises when another holds it."""
        try:
            import fcntl
        except ImportError:  # not a POSIX system: the PID record is all there is
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = self._read_holder()
                raise RunLockedError(
                    f"training.output_dir: {self.path.parent} is in use by another symnoise run "
                    f"({_holder_text(holder)}); wait for it to end or stop it, or choose another "
                    "output_dir"
                ) from None
            if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                logger.warning(
                    "%s: the file system does not support locks; checking the PID record only", self.path
                )
                return False
            raise
        return True

    def release(self) -> None:
        """Empty the record (an empty lock file is not a stale lock) and drop the lock."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        os.close(self.fd)  # closing the descriptor releases the flock
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
