"""Generic folder: any video files or frame folders, with an optional `labels.csv`.

Split comes from the path: anything under a folder named `train`/`training` is training footage,
everything else is test footage (to be scored). Video ids are file or folder stems when those are
unique, else the relative path with `/` turned into `_`. `labels.csv` (video,frame,label, 0-based)
at the root labels test videos by id.
"""

from __future__ import annotations

from pathlib import Path

from tasks.datasets._base import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    Split,
    VideoSource,
    frames_source,
    read_labels_csv,
)
from tasks.errors import DatasetLayoutError

_TRAIN_DIRS = {"train", "training"}


def detect(root: Path) -> bool:
    return root.is_dir()


def list_videos(root: Path) -> list[VideoSource]:
    found = _walk(root)
    stems = [rel.with_suffix("").name if is_file else rel.name for rel, is_file in found]
    unique = len(set(stems)) == len(stems)
    labels_path = root / "labels.csv"
    labels = read_labels_csv(labels_path) if labels_path.is_file() else {}

    videos: list[VideoSource] = []
    for (rel, is_file), stem in zip(found, stems):
        video_id = stem if unique else "_".join((rel.with_suffix("") if is_file else rel).parts)
        split: Split = "train" if _TRAIN_DIRS & {p.lower() for p in rel.parts[:-1]} else "test"
        video_labels = labels.pop(video_id, None)
        if video_labels is not None and split == "train":
            raise DatasetLayoutError(f"{labels_path}: labels given for training video {video_id!r}")
        if is_file:
            videos.append(VideoSource(video_id, split, str(root / rel), "file", labels=video_labels))
        else:
            videos.append(frames_source(video_id, split, root / rel, labels=video_labels))
    if labels:
        raise DatasetLayoutError(f"{labels_path}: labels for videos that are not in {root}: {sorted(labels)[:5]}")
    return videos


def _walk(root: Path) -> list[tuple[Path, bool]]:
    """(relative path, is a video file) for every video file and frame folder under `root`."""
    out: list[tuple[Path, bool]] = []
    for path in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
            out.append((path.relative_to(root), True))
        elif path.is_dir() and any(
            p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir()
        ):
            out.append((path.relative_to(root), False))
    return out
