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
folders, not from columns inside the files; `read_table` reads them as strings (`PARTITIONING`), so
a run id like `2024` or `0042` reads back as written. Plain pandas infers their type (categoricals;
integers where every id of the tree is a number): pass `partitioning=PARTITIONING`. Each file is
written under a dot-prefixed temporary name (readers skip those) and renamed into place; a run's
`run.json` is written last, so a run with a manifest has both tables.

Temporary names and who clears them: `storage._files` (`atomic_write`).
`run_lock` takes a run's lock file (`storage._locks`), which archive runs hold while they write.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from vad.storage._files import atomic_write
from vad.storage._locks import FileLock, acquire

from vad.errors import NotFoundError, ParameterError

TABLES = ("clips", "frames", "events", "videos", "failures")
# the partition folders' names, read as strings: inferred, `run=2024` would be an integer (and a
# filter on "2024" an error) whenever no other id of the tree has a letter
PARTITIONING = pads.partitioning(pa.schema([("dataset", pa.string()), ("run", pa.string())]), flavor="hive")
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
    return pd.read_parquet(base, filters=filters or None, partitioning=PARTITIONING)


def read_manifest(root: str | Path, dataset: str, run_id: str) -> dict[str, Any]:
    path = run_dir(root, "runs", dataset, run_id) / "run.json"
    if not path.exists():
        raise NotFoundError(f"run {run_id!r} of dataset {dataset!r} has no manifest at {path}")
    return json.loads(path.read_text())
