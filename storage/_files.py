"""Atomic writes: every file (score tables, manifests, checkpoints) and folder (reports) the project
writes goes through `atomic_write` or `atomic_folder`, so a reader never sees half of one.

A temporary file's name carries its writer's pid and host (`.part-0.parquet.<pid>@<host>.<random>.tmp`).
A write clears only stale temporary files of its target: those whose writer, on this host, is gone
(a live writer's file stays, however old), and those of writers it cannot check (another host)
older than `STALE_TMP_S` (1 hour; writing one file takes seconds). Several processes may therefore
write one file at once: each renames a whole file into place, and the last one stays.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vad.storage._locks import FOLDER_LOCK_WAIT_S, HOST, acquire, process_alive

STALE_TMP_S = 3600.0  # a temporary file of a writer that cannot be checked (another host), older than this, was left by a crash


def _stale_tmp(tmp: Path, target: Path, now: float) -> bool:
    """Whether `tmp`, a temporary file of `target`, was left by a writer that is gone (see the module docstring)."""
    try:
        mtime = tmp.stat().st_mtime
    except FileNotFoundError:
        return False
    writer = tmp.name[len(target.name) + 2 : -len(".tmp")].rsplit(".", 1)[0]  # "<pid>@<host>"
    pid, _, host = writer.partition("@")
    if host == HOST and pid.isdigit():  # a writer here is checked first: a live one keeps its file, however old
        return not process_alive(int(pid), started_before=mtime)
    return now - mtime > STALE_TMP_S  # another machine's, or a name from before pids were recorded: only its age tells


def atomic_write(path: str | Path, write: Any) -> Path:
    """Write a file through `write(tmp_path)` under a temporary name beside `path`, fsync it, then
    rename it into place: readers never see half a file. Temporary files left by dead writers are
    cleared first, never one a live process is writing. Tables, manifests and checkpoints use it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a process killed mid-write (SIGKILL, power loss) leaves its temporary file: clear those, and
    # never one that another live process is writing now
    now = time.time()
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        if _stale_tmp(tmp, path, now):
            tmp.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}@{HOST}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_folder(path: str | Path, *, purpose: str, timeout: float = FOLDER_LOCK_WAIT_S) -> Iterator[Path]:
    """Build a folder in the yielded temporary folder beside `path`; when the block ends without an
    error, the new folder takes `path`'s place whole, by two renames (the old one aside, the new one
    in). Readers see the old folder or the new one, never a half-built one (between the two renames,
    an instant, none); a failure anywhere, the swap included, leaves the old folder as it was.

    Builders of one folder take turns through a lock beside it (`.<name>.lock`, waited for up to
    `timeout` seconds), so what they leave behind is theirs to clear: the holder removes temporary
    folders of builders that died and puts back an old folder a crash left set aside. Reports use it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with acquire(path.parent / f".{path.name}.lock", purpose=purpose, timeout=timeout):
        aside = path.parent / f".{path.name}.old"
        if aside.exists():  # a builder died between its two renames: the old folder comes back
            if path.exists():
                shutil.rmtree(aside)
            else:
                aside.rename(path)
        # exactly this folder's temporary names (mkdtemp's random part has no dot): `.v1.<x>.tmp` is
        # not `.v1.1.<x>.tmp`, which another builder, of folder `v1.1`, may be writing now
        mine = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]+\.tmp")
        for left in path.parent.iterdir():
            if mine.fullmatch(left.name):
                shutil.rmtree(left, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            yield tmp
            had_old = path.exists()
            if had_old:
                path.rename(aside)
            try:
                tmp.rename(path)
            except BaseException:
                if had_old:
                    aside.rename(path)
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if had_old:
            shutil.rmtree(aside, ignore_errors=True)
