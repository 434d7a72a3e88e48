"""Storage front: the Zarr clip store and clip arithmetic (Parquet score tables come later)."""

from storage._clips import Clip, clip_count, clip_windows
from storage._clipstore import ClipStore, Video, VideoWriter

__all__ = ["Clip", "ClipStore", "Video", "VideoWriter", "clip_count", "clip_windows"]
