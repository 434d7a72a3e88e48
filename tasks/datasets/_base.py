"""What every dataset adapter returns: a list of `VideoSource`s, one per video."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from tasks.errors import DatasetLayoutError, LabelMismatchError, NotFoundError

Split = Literal["train", "test"]

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})

_VALID_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class VideoSource:
    """One video of a dataset, as an adapter found it.

    `uri` is a video file or a folder of frame images (`kind`). Labels are either a per-frame
    0/1 array (`labels`, must match the decoded frame count exactly) or 0-based half-open frame
    ranges (`label_ranges`, for annotation formats that do not state the frame count); a test
    video with neither has unknown labels (-1 in the store). Training videos are normal by
    definition, so adapters give them no labels and the store records 0.
    """

    video_id: str
    split: Split
    uri: str
    kind: Literal["file", "frames"]
    labels: np.ndarray | None = field(default=None, compare=False, repr=False)
    label_ranges: tuple[tuple[int, int], ...] | None = None
    frame_files: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not _VALID_ID.match(self.video_id):
            raise DatasetLayoutError(
                f"{self.uri}: video id {self.video_id!r} is not usable as a store group name "
                "(letters, digits, '_', '-', '.'; not starting with '.' or '_')"
            )
        if self.split not in ("train", "test"):
            raise DatasetLayoutError(f"{self.uri}: split must be 'train' or 'test', got {self.split!r}")
        if self.kind == "frames" and not self.frame_files:
            raise DatasetLayoutError(f"{self.uri}: frame folder has no image files")
        if self.labels is not None and self.label_ranges is not None:
            raise DatasetLayoutError(f"{self.uri}: give labels or label_ranges, not both")

    def frame_labels(self, n_frames: int) -> np.ndarray:
        """Per-frame labels for a video of `n_frames` frames: int8, 1 anomalous, 0 normal, -1 unknown.

        Raises `LabelMismatchError` naming the video and both counts when the labels do not fit.
        """
        if self.labels is not None:
            labels = np.asarray(self.labels).astype(np.int8)
            if labels.shape != (n_frames,):
                raise LabelMismatchError(self.video_id, int(labels.size), n_frames, self.uri)
            return labels
        if self.label_ranges is not None:
            labels = np.zeros(n_frames, dtype=np.int8)
            for start, stop in self.label_ranges:
                if not 0 <= start < stop <= n_frames:
                    raise LabelMismatchError(self.video_id, int(stop), n_frames, self.uri)
                labels[start:stop] = 1
            return labels
        return np.full(n_frames, 0 if self.split == "train" else -1, dtype=np.int8)


def natural_key(name: str) -> list[object]:
    """Sort key that orders 'frame2' before 'frame10'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def frame_files(folder: Path) -> tuple[str, ...]:
    """The image files of a frame folder in natural order, as absolute paths (all one extension)."""
    # Dot-files are skipped: copies unpacked on a Mac carry a `._000.tif` resource fork beside
    # every frame, with an image extension but no image inside.
    files = [
        p for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    ]
    suffixes = {p.suffix.lower() for p in files}
    if len(suffixes) > 1:
        raise DatasetLayoutError(f"{folder}: frame folder mixes image types {sorted(suffixes)}")
    return tuple(str(p) for p in sorted(files, key=lambda p: natural_key(p.name)))


def frames_source(video_id: str, split: Split, folder: Path, **labels: object) -> VideoSource:
    """A `VideoSource` for a folder of frame images."""
    return VideoSource(video_id, split, str(folder), "frames", frame_files=frame_files(folder), **labels)  # type: ignore[arg-type]


def require_dir(path: Path, what: str) -> Path:
    """`path` if it is a readable folder, else a clear error naming it."""
    if not path.exists():
        raise NotFoundError(f"{path}: {what} does not exist")
    if not path.is_dir():
        raise DatasetLayoutError(f"{path}: {what} is not a folder")
    try:
        next(path.iterdir(), None)
    except PermissionError as exc:
        raise DatasetLayoutError(f"{path}: {what} is not readable ({exc.strerror})") from exc
    return path


def read_labels_csv(path: Path) -> dict[str, np.ndarray]:
    """Frame labels from a `video,frame,label` CSV (0-based frames) as one int8 array per video.

    Every video's frames must run 0..N-1 without gaps; anything else is an error naming the file.
    """
    rows: dict[str, dict[int, int]] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"video", "frame", "label"} <= set(reader.fieldnames):
            raise DatasetLayoutError(f"{path}: expected the header video,frame,label, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                frame, label = int(row["frame"]), int(row["label"])
            except (TypeError, ValueError) as exc:
                raise DatasetLayoutError(f"{path}:{line}: frame and label must be integers") from exc
            if label not in (0, 1):
                raise DatasetLayoutError(f"{path}:{line}: label must be 0 or 1, got {label}")
            rows.setdefault(row["video"], {})[frame] = label
    out: dict[str, np.ndarray] = {}
    for video, frames in rows.items():
        n = max(frames) + 1
        if len(frames) != n or min(frames) != 0:
            raise DatasetLayoutError(f"{path}: video {video!r} has frames missing from 0..{n - 1}")
        out[video] = np.array([frames[i] for i in range(n)], dtype=np.int8)
    return out


def load_mat(path: Path, key: str) -> np.ndarray:
    """Variable `key` of a MATLAB v5 file, with errors that name the file."""
    import scipy.io  # imported here: it costs ~0.4 s and only label reading needs it
    from scipy.io.matlab import MatReadError

    try:
        data = scipy.io.loadmat(path)
    except NotImplementedError as exc:  # scipy's answer to MATLAB v7.3 (HDF5) files
        raise DatasetLayoutError(f"{path}: MATLAB v7.3 files are not supported; re-save with -v7") from exc
    except (MatReadError, OSError, ValueError, TypeError, IndexError) as exc:
        raise DatasetLayoutError(f"{path}: not a readable MATLAB file ({exc})") from exc
    if key not in data:
        names = sorted(k for k in data if not k.startswith("__"))
        raise DatasetLayoutError(f"{path}: no variable {key!r} (the file has {names})")
    return np.asarray(data[key])
