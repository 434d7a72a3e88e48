"""Storage front: the Zarr clip store, clip arithmetic and the Parquet score tables."""

from storage._clips import Clip, clip_count, clip_windows
from storage._clipstore import ClipStore, Video, VideoWriter
from storage._tables import (
    TABLES, check_run_id, delete_part, part_path, read_manifest, read_part, read_table, run_dir, write_manifest,
    write_table,
)

__all__ = [
    "TABLES", "Clip", "ClipStore", "check_run_id", "Video", "VideoWriter", "clip_count", "clip_windows", "delete_part",
    "part_path", "read_manifest", "read_part", "read_table", "run_dir", "write_manifest", "write_table",
]
