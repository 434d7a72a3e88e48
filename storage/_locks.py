"""Exclusive lock files shared by processes and machines (one workspace on a local or NFS file system).

A lock is a file created atomically (`O_CREAT | O_EXCL`) holding who took it: pid, host, start
time, what for, and a random token. Its holder refreshes the file's modification time every
`REFRESH_S` seconds from a background thread and removes it on release (and at interpreter exit).
A lock is **stale**, and taken over by the next process that wants it, when
- its holder ran on this host and that process is gone (or is another process that reused the pid);
  a live holder on this host keeps its lock however long since it was refreshed (a suspended
  machine, a stalled disk), or
- its holder cannot be checked (another host, or a file left half-written by a crash right after
  its creation) and it was not refreshed for `STALE_AFTER_S` seconds.
Takeover happens under a second, short-lived lock file (`<lock>.break`) and re-reads the lock under
it, so two processes that both found a lock stale never remove a lock that a third just took.

Locks guard a run of the score tables (`vad.storage._tables.run_lock`) and a video group of a clip
store (`ClipStore.begin_video` ... `VideoWriter.finish` / `abort`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vad.errors import LockHeldError

REFRESH_S = 30.0  # a holder touches its lock files this often
STALE_AFTER_S = 600.0  # a lock of a holder that cannot be checked (another host) is stale when not refreshed for this long
# How long a writer waits for another process holding the same lock, by what the lock guards; the
# one definition of each (callers take them from `vad.storage`):
SCORE_RUN_LOCK_WAIT_S = 600.0  # a scoring run (`vad score`) writes its tables in seconds
ARCHIVE_RUN_LOCK_WAIT_S = 12 * 3600.0  # an archive run (nightly, backfill) can take hours
GROUP_LOCK_WAIT_S = 3600.0  # another process ingesting or deleting the same video group
FOLDER_LOCK_WAIT_S = 600.0  # another process building the same folder (`atomic_folder`: a report)
BREAK_STALE_S = 60.0  # a takeover takes milliseconds; a `.break` file older than this was left by a crash
HOST = socket.gethostname()


def process_alive(pid: int, *, started_before: float | None = None) -> bool:
    """Whether process `pid` of this host runs (a zombie does not); with `started_before` (a POSIX
    time), also whether it was started by then, so a process that reused a dead holder's pid is not
    taken for the holder."""
    import psutil  # a dependency of dask[distributed]

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started_before is None or proc.create_time() <= started_before + 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: it exists
        return True


@dataclass
class FileLock:
    """A held lock; `release()` (or leaving the `with` block) removes its file."""

    path: Path
    token: str
    info: dict[str, Any] = field(default_factory=dict)
    released: bool = False

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Remove the lock file if it is still this lock's (a takeover after a long stall may have
        replaced it); calling it again does nothing."""
        if self.released:
            return
        self.released = True
        _HELD.pop(self.token, None)
        if (_read(self.path) or {}).get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def describe(path: Path, info: dict[str, Any] | None) -> str:
    """`<path> (held by pid P on host H since T: purpose)`, for error and wait messages."""
    if not info:
        return f"{path} (held by a process that has not written its name yet)"
    return (f"{path} (held by pid {info.get('pid')} on host {info.get('host')} since {info.get('started_at')}: "
            f"{info.get('purpose', '')})")


def acquire(
    path: str | Path, *, purpose: str, timeout: float = 0.0, poll: float = 0.25, stale_after: float = STALE_AFTER_S,
    on_wait: Callable[[str], None] | None = None,
) -> FileLock:
    """Take the lock file at `path`, waiting up to `timeout` seconds for a live holder to release it
    (`on_wait` is called once, with a line naming the holder, when waiting starts); a stale lock is
    taken over. Raises `LockHeldError` naming the lock and its holder when the time is up."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    info = {"pid": os.getpid(), "host": HOST, "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "started": time.time(), "purpose": purpose, "token": token}
    deadline = time.monotonic() + timeout
    told = False
    while True:
        if _create(path, info):
            lock = FileLock(path, token, info)
            _HELD[token] = lock
            _start_refresher()
            return lock
        holder = _read(path)
        if is_stale(path, holder, stale_after=stale_after):
            _break(path, holder, stale_after=stale_after)
            continue
        if time.monotonic() >= deadline:
            waited = f"; waited {timeout:g} s" if timeout else ""
            raise LockHeldError(f"cannot {purpose}: {describe(path, holder)}{waited}")
        if on_wait is not None and not told:
            on_wait(f"waiting up to {timeout:g} s for {describe(path, holder)}")
            told = True
        time.sleep(poll)


def is_stale(path: Path, holder: dict[str, Any] | None, *, stale_after: float = STALE_AFTER_S) -> bool:
    """Whether the lock at `path` (whose content is `holder`) may be taken over (see the module docstring)."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False  # released meanwhile: the next create takes it
    if holder is not None and holder.get("host") == HOST:  # a holder here is checked first, whatever the age
        try:
            return not process_alive(int(holder["pid"]), started_before=float(holder["started"]))
        except (KeyError, TypeError, ValueError):
            pass  # a name without a usable pid: only its age tells
    return age > stale_after  # being written, or held on another host: only its age tells


def _create(path: Path, info: dict[str, Any]) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, json.dumps(info).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None


def _break(path: Path, seen: dict[str, Any] | None, *, stale_after: float) -> None:
    """Remove the stale lock at `path`, under `<path>.break`, only if it is still the one seen stale."""
    guard = path.with_name(path.name + ".break")
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - guard.stat().st_mtime > BREAK_STALE_S:
                guard.unlink()
        time.sleep(0.05)
        return
    os.close(fd)
    try:
        now = _read(path)
        same = (now or {}).get("token") == (seen or {}).get("token")
        if same and is_stale(path, now, stale_after=stale_after):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    finally:
        guard.unlink(missing_ok=True)


# --- the holder's side: refresh every held lock, release what is left at exit ------------------

_HELD: dict[str, FileLock] = {}
_REFRESHER: list[threading.Thread] = []
_REFRESHER_LOCK = threading.Lock()


def _refresh_forever() -> None:
    while True:
        time.sleep(REFRESH_S)
        for lock in list(_HELD.values()):
            with contextlib.suppress(OSError):
                os.utime(lock.path)


def _start_refresher() -> None:
    with _REFRESHER_LOCK:
        if not _REFRESHER or not _REFRESHER[0].is_alive():
            thread = threading.Thread(target=_refresh_forever, name="vad-lock-refresh", daemon=True)
            thread.start()
            _REFRESHER[:] = [thread]


def _release_all() -> None:
    for lock in list(_HELD.values()):
        with contextlib.suppress(OSError):
            lock.release()


def _after_fork() -> None:  # a forked child holds none of its parent's locks
    _HELD.clear()
    _REFRESHER.clear()


atexit.register(_release_all)
os.register_at_fork(after_in_child=_after_fork)
