"""Storage front: the Zarr clip store, clip arithmetic, the Parquet score tables, lock files (and how
long each kind is waited for) and atomic writes of files and folders."""

from vad.storage._clips import Clip, clip_count, clip_windows
from vad.storage._clipstore import ClipStore, Video, VideoWriter
from vad.storage._files import atomic_folder, atomic_write
from vad.storage._locks import (
    ARCHIVE_RUN_LOCK_WAIT_S,
    FOLDER_LOCK_WAIT_S,
    GROUP_LOCK_WAIT_S,
    SCORE_RUN_LOCK_WAIT_S,
    FileLock,
    LockHeldError,
)
from vad.storage._locks import acquire as acquire_lock
from vad.storage._tables import (
    PARTITIONING,
    TABLES,
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
    "ARCHIVE_RUN_LOCK_WAIT_S", "FOLDER_LOCK_WAIT_S", "GROUP_LOCK_WAIT_S", "PARTITIONING", "SCORE_RUN_LOCK_WAIT_S", "TABLES",
    "Clip", "ClipStore", "FileLock", "LockHeldError", "Video", "VideoWriter", "acquire_lock", "atomic_folder",
    "atomic_write", "check_dataset_name", "check_run_id", "clip_count", "clip_windows", "delete_manifest", "delete_part",
    "part_path", "read_manifest", "read_part", "read_table", "run_dir", "run_lock", "write_manifest", "write_table",
]
