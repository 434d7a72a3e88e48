"""Storage front: the Zarr clip store, clip arithmetic, the Parquet score tables and lock files."""

from vad.storage._clips import Clip, clip_count, clip_windows
from vad.storage._clipstore import ClipStore, Video, VideoWriter
from vad.storage._locks import FileLock, LockHeldError
from vad.storage._locks import acquire as acquire_lock
from vad.storage._tables import (
    TABLES,
    atomic_folder,
    atomic_write,
    check_dataset_name,
    check_run_id,
    delete_manifest,
    delete_part,
    part_path,
    read_manifest,
    read_part,
    read_table,
    run_dir,
    run_lock,
    write_manifest,
    write_table,
)

__all__ = [
    "TABLES", "atomic_folder", "atomic_write", "check_dataset_name", "Clip", "ClipStore", "FileLock", "LockHeldError", "Video", "VideoWriter", "acquire_lock", "check_run_id",
    "clip_count", "clip_windows", "delete_manifest", "delete_part", "part_path", "read_manifest", "read_part",
    "read_table", "run_dir", "run_lock", "write_manifest", "write_table",
]
