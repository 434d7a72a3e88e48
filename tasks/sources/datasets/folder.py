"""Generic folder: any video files or frame folders, with an optional `labels.csv`.

Split comes from the path: anything under a folder named `train`/`training` is training footage,
everything else is test footage (to be scored). A video's id follows `video_id_for` from its file
or folder name when no other video's name gives the same id, else from its relative path
(`night/cam 1.mp4` -> `night_cam-1`); paths that still share an id get a suffix (`unique_ids`). `labels.csv`
(video,frame,label, 0-based) at the root labels test videos by id or by relative path
(`night/cam 1.mp4`). A video that cannot be used (an id the store reserves, a frame folder mixing
image types, a folder that cannot be read) is listed as a failure and the others go on. What a
folder without training footage is told: `FOLDER_LAYOUT` (see `ingest.require_training_footage`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from vad.tasks.sources.datasets._base import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    Listing,
    Split,
    VideoSource,
    frames_source,
    read_labels_csv,
    try_video_id,
    unique_ids,
)

from vad.errors import DatasetLayoutError

_TRAIN_DIRS = {"train", "training"}


def detect(root: Path) -> bool:
    return root.is_dir()


def list_videos(root: Path) -> list[VideoSource]:
    """Every usable video under `root`; a video that cannot be used is an error (see `survey`)."""
    listing = survey(root)
    if listing.failures:
        raise DatasetLayoutError(next(iter(listing.failures.values())))
    return listing.videos


def survey(root: Path) -> Listing:
    """The videos under `root`, with a one-line failure for each one that cannot be used and a
    warning for each one whose id had to change to stay distinct."""
    listing = Listing()
    found = _walk(root, listing.failures)
    names = {rel: try_video_id(rel.name) for rel in found}
    uses = Counter(v.casefold() for v in names.values() if v)
    wanted = {rel: try_video_id(rel) if vid and uses[vid.casefold()] > 1 else vid for rel, vid in names.items()}
    ids, listing.warnings = unique_ids({rel.as_posix(): vid for rel, vid in wanted.items()})
    labels_path = root / "labels.csv"
    labels = read_labels_csv(labels_path) if labels_path.is_file() else {}
    for rel, is_file in found.items():
        video_id = ids[rel.as_posix()]
        split: Split = "train" if _TRAIN_DIRS & {p.lower() for p in rel.parts[:-1]} else "test"
        video_labels = labels.pop(video_id, None)
        if video_labels is None:
            video_labels = labels.pop(rel.as_posix(), None)
        try:
            if video_labels is not None and split == "train":
                raise DatasetLayoutError(f"{labels_path}: labels given for training video {video_id!r}")
            if is_file:
                listing.videos.append(VideoSource(video_id, split, str(root / rel), "file", labels=video_labels, relative=rel.as_posix()))
            else:
                listing.videos.append(frames_source(video_id, split, root / rel, labels=video_labels, relative=rel.as_posix()))
        except DatasetLayoutError as exc:
            listing.failures[rel.as_posix()] = str(exc)
    for rel in listing.failures:  # a video that cannot be read is there: its labels are not for a missing one
        for key in (rel, try_video_id(rel.rsplit("/", 1)[-1]), try_video_id(rel)):
            labels.pop(key or rel, None)
    if labels:
        raise DatasetLayoutError(f"{labels_path}: labels for videos that are not in {root}: {sorted(labels)[:5]}")
    return listing


def _walk(root: Path, failures: dict[str, str]) -> dict[Path, bool]:
    """relative path -> is a video file, for every video file and frame folder under `root`; a
    folder that cannot be read goes to `failures`."""
    out: dict[Path, bool] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
            out[rel] = True
        elif path.is_dir():
            try:
                if any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir()):
                    out[rel] = False
            except OSError as exc:
                failures[rel.as_posix()] = f"{path}: cannot read this folder ({exc.strerror})"
    return out
