"""Dataset adapters: each turns a dataset folder into a list of `VideoSource`s.

Every adapter module exposes `detect(root) -> bool` (does this folder look like my layout?) and
`list_videos(root) -> list[VideoSource]`. `discover` picks one by name or by detection.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import ModuleType

from tasks.datasets import avenue, folder, shanghaitech, ucf_crime, ucsd
from tasks.datasets._base import VideoSource, read_labels_csv, require_dir
from tasks.errors import DatasetLayoutError, ParameterError

# Detection order matters: the specific layouts first, the generic folder last.
ADAPTERS: dict[str, ModuleType] = {
    "ucsd": ucsd,
    "avenue": avenue,
    "shanghaitech": shanghaitech,
    "ucf-crime": ucf_crime,
    "folder": folder,
}
FORMATS = ("auto", *ADAPTERS)

__all__ = ["ADAPTERS", "FORMATS", "VideoSource", "detect_format", "discover", "read_labels_csv"]


def detect_format(root: Path) -> str:
    """The name of the first adapter whose layout `root` matches (the generic folder at worst)."""
    for name, adapter in ADAPTERS.items():
        if adapter.detect(root):
            return name
    return "folder"


def discover(source: str | Path, fmt: str = "auto") -> list[VideoSource]:
    """All videos of the dataset at `source`, train split first, in a stable order."""
    if fmt not in FORMATS:
        raise ParameterError(f"unknown dataset format {fmt!r}; choose one of {', '.join(FORMATS)}")
    root = require_dir(Path(source).expanduser(), "dataset folder")
    name = detect_format(root) if fmt == "auto" else fmt
    videos = ADAPTERS[name].list_videos(root)
    if not videos:
        raise DatasetLayoutError(f"{root}: no videos found (format {name!r})")
    dupes = [vid for vid, n in Counter(v.video_id for v in videos).items() if n > 1]
    if dupes:
        raise DatasetLayoutError(f"{root}: video ids are not unique: {sorted(dupes)[:5]}")
    return sorted(videos, key=lambda v: (v.split != "train", v.video_id))
