"""Dataset adapters: each turns a dataset folder into a list of `VideoSource`s.

Every adapter module exposes `detect(root) -> bool` (does this folder look like my layout?) and
`list_videos(root) -> list[VideoSource]`; one that can go on past a video it cannot use also
exposes `survey(root) -> Listing`. `discover` picks one by name or by detection and wants every
video usable; `survey` reports the unusable ones and goes on (what an ingest does).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import ModuleType

from vad.tasks.sources.datasets import avenue, folder, shanghaitech, ucf_crime, ucsd
from vad.tasks.sources.datasets._base import (
    FOLDER_LAYOUT,
    Listing,
    VideoSource,
    read_labels_csv,
    require_dir,
    video_id_for,
)

from vad.errors import DatasetLayoutError, ParameterError

# Detection order matters: the specific layouts first, the generic folder last.
ADAPTERS: dict[str, ModuleType] = {
    "ucsd": ucsd,
    "avenue": avenue,
    "shanghaitech": shanghaitech,
    "ucf-crime": ucf_crime,
    "folder": folder,
}
FORMATS = ("auto", *ADAPTERS)

__all__ = [
    "ADAPTERS", "FOLDER_LAYOUT", "FORMATS", "Listing", "VideoSource", "detect_format", "discover", "read_labels_csv", "survey", "video_id_for",
]


def detect_format(root: Path) -> str:
    """The name of the first adapter whose layout `root` matches (the generic folder at worst)."""
    for name, adapter in ADAPTERS.items():
        if adapter.detect(root):
            return name
    return "folder"


def discover(source: str | Path, fmt: str = "auto") -> list[VideoSource]:
    """All videos of the dataset at `source`, train split first, in a stable order; a video that
    cannot be used is an error."""
    listing = survey(source, fmt)
    if listing.failures:
        raise DatasetLayoutError(next(iter(listing.failures.values())))
    return listing.videos


def survey(source: str | Path, fmt: str = "auto") -> Listing:
    """The videos of the dataset at `source` as `discover` orders them, with a one-line failure for
    each video found but unusable and a warning for each id that had to change. A dataset with no
    video at all, or whose layout is wrong as a whole, is still an error."""
    if fmt not in FORMATS:
        raise ParameterError(f"unknown dataset format {fmt!r}; choose one of {', '.join(FORMATS)}")
    root = require_dir(Path(source).expanduser(), "dataset folder")
    name = detect_format(root) if fmt == "auto" else fmt
    adapter = ADAPTERS[name]
    listing = adapter.survey(root) if hasattr(adapter, "survey") else Listing(adapter.list_videos(root))
    if not listing.videos and not listing.failures:
        raise DatasetLayoutError(f"{root}: no videos found (format {name!r})")
    # Compared without case: a store must survive a case-insensitive file system (see `unique_ids`).
    uses = Counter(v.video_id.casefold() for v in listing.videos)
    dupes = sorted({v.video_id for v in listing.videos if uses[v.video_id.casefold()] > 1})
    if dupes:
        raise DatasetLayoutError(f"{root}: video ids are not unique (ignoring case): {dupes[:5]}")
    listing.videos.sort(key=lambda v: (v.split != "train", v.video_id))
    return listing
