"""Parquet score tables, hive-partitioned by dataset and run, written atomically.

    <root>/scores/clips/dataset=<name>/run=<id>/part-<part>.parquet
    <root>/scores/frames/dataset=<name>/run=<id>/part-<part>.parquet
    <root>/scores/videos/dataset=<name>/run=<id>/part-<video>.parquet     (archive runs)
    <root>/scores/failures/dataset=<name>/run=<id>/part-<video>.parquet   (archive runs)
    <root>/scores/runs/dataset=<name>/run=<id>/run.json

A benchmark run writes one part (`part-0`) per table. An archive run (backfill, nightly) writes one
part per video, so re-scoring a video replaces its rows and never duplicates them; its `videos`
part, written last, records what the video was scored with, and `failures` holds one part per
video whose latest attempt failed (removed when it succeeds).

Clip and frame rows live in separate trees so that `pd.read_parquet(<root>/scores/clips,
filters=[("dataset", "==", "ped2")])` reads one schema. `dataset` and `run` come from the partition
folders (pandas gives them as categoricals), not from columns inside the files. Each file is
written under a dot-prefixed temporary name (readers skip those) and renamed into place; a run's
`run.json` is written last, so a run with a manifest has both tables.

A temporary name carries its writer's pid and host (`.part-0.parquet.<pid>@<host>.<random>.tmp`).
A write clears only stale temporary files of its target: those whose writer, on this host, is gone,
and any older than `STALE_TMP_S` (1 hour; writing one file takes seconds). Several processes may
therefore write one file at once: each renames a whole file into place, and the last one stays.
`run_lock` takes a run's lock file (`storage._locks`), which archive runs hold while they write.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from vad.storage._locks import HOST, FileLock, acquire, process_alive

from vad.errors import NotFoundError, ParameterError

TABLES = ("clips", "frames", "videos", "failures")
STALE_TMP_S = 3600.0  # a temporary table file older than this was left by a crash
_DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_RUN_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def check_dataset_name(name: str) -> str:
    """A dataset name used in paths: letters, digits, '_', '-' or '.', not starting with a dot."""
    if not _DATASET_NAME.match(name):
        raise ParameterError(f"dataset name {name!r} must be letters, digits, '_', '-' or '.' (used in paths)")
    return name


def check_run_id(run_id: str) -> str:
    if not run_id or not set(run_id) <= _RUN_ID_CHARS or run_id.startswith("."):
        raise ParameterError(f"run id {run_id!r} must be letters, digits, '-', '_' or '.' (used in paths)")
    return run_id


def run_dir(root: str | Path, table: str, dataset: str, run_id: str) -> Path:
    if table not in (*TABLES, "runs"):
        raise ParameterError(f"unknown table {table!r}; one of {', '.join(TABLES)}")
    return Path(root) / "scores" / table / f"dataset={check_dataset_name(dataset)}" / f"run={check_run_id(run_id)}"


def _stale_tmp(tmp: Path, target: Path, now: float) -> bool:
    """Whether `tmp`, a temporary file of `target`, was left by a writer that is gone (see the module docstring)."""
    try:
        mtime = tmp.stat().st_mtime
    except FileNotFoundError:
        return False
    if now - mtime > STALE_TMP_S:
        return True
    writer = tmp.name[len(target.name) + 2 : -len(".tmp")].rsplit(".", 1)[0]  # "<pid>@<host>"
    pid, _, host = writer.partition("@")
    if host != HOST or not pid.isdigit():
        return False  # another machine's, or a name from before pids were recorded: only its age tells
    return not process_alive(int(pid), started_before=mtime)


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
def atomic_folder(path: str | Path, *, purpose: str, timeout: float = 600.0) -> Iterator[Path]:
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


def part_path(root: str | Path, table: str, dataset: str, run_id: str, part: str = "0") -> Path:
    if table not in TABLES:
        raise ParameterError(f"unknown table {table!r}; one of {', '.join(TABLES)}")
    return run_dir(root, table, dataset, run_id) / f"part-{check_run_id(part)}.parquet"


def write_table(root: str | Path, table: str, dataset: str, run_id: str, frame: pd.DataFrame, *, part: str = "0") -> Path:
    """Write one part of a run's table (replacing that part's earlier file, so re-runs never duplicate rows)."""
    if {"dataset", "run"} & set(frame.columns):
        raise ParameterError("'dataset' and 'run' come from the partition folders; drop them from the table")
    path = part_path(root, table, dataset, run_id, part)
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    atomic_write(path, lambda tmp: pq.write_table(arrow, tmp))
    return path


def delete_part(root: str | Path, table: str, dataset: str, run_id: str, part: str) -> bool:
    """Remove one part of a run's table; True when there was one."""
    path = part_path(root, table, dataset, run_id, part)
    if path.exists():
        path.unlink()
        return True
    return False


def read_part(root: str | Path, table: str, dataset: str, run_id: str, part: str) -> pd.DataFrame | None:
    """One part of a run's table, or None when it is not there."""
    path = part_path(root, table, dataset, run_id, part)
    return pd.read_parquet(path) if path.exists() else None


def delete_manifest(root: str | Path, dataset: str, run_id: str) -> bool:
    """Remove a run's run.json (a run starting again under its id, so that a crash midway is never
    read as a complete run); True when there was one."""
    path = run_dir(root, "runs", dataset, run_id) / "run.json"
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        return True
    return False


def run_lock(root: str | Path, dataset: str, run_id: str, *, purpose: str, timeout: float = 0.0, on_wait: Any = None) -> FileLock:
    """Take the lock of one run, `<root>/scores/runs/dataset=<d>/run=<r>/run.lock`, waiting up to
    `timeout` seconds for another process holding it (`vad.storage._locks.acquire`)."""
    return acquire(run_dir(root, "runs", dataset, run_id) / "run.lock", purpose=purpose, timeout=timeout, on_wait=on_wait)


def write_manifest(root: str | Path, dataset: str, run_id: str, manifest: dict[str, Any]) -> Path:
    path = run_dir(root, "runs", dataset, run_id) / "run.json"
    text = json.dumps(manifest, indent=2, default=str)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def read_table(root: str | Path, table: str, *, dataset: str | None = None, run_id: str | None = None) -> pd.DataFrame:
    """All rows of `table` (clips, frames, videos or failures), optionally of one dataset and run."""
    base = Path(root) / "scores" / table
    if table not in TABLES:
        raise ParameterError(f"unknown table {table!r}; one of {', '.join(TABLES)}")
    if not base.exists():
        raise NotFoundError(f"no score tables under {base}; run `vad score` first")
    filters = [(k, "==", v) for k, v in (("dataset", dataset), ("run", run_id)) if v is not None]
    return pd.read_parquet(base, filters=filters or None)


def read_manifest(root: str | Path, dataset: str, run_id: str) -> dict[str, Any]:
    path = run_dir(root, "runs", dataset, run_id) / "run.json"
    if not path.exists():
        raise NotFoundError(f"run {run_id!r} of dataset {dataset!r} has no manifest at {path}")
    return json.loads(path.read_text())
