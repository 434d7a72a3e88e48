"""What every dataset adapter returns: a list of `VideoSource`s, one per video; and the one rule
that turns a file's path into a video id."""

from __future__ import annotations

import csv
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Literal

import numpy as np

from vad.errors import DatasetLayoutError, LabelMismatchError, NotFoundError

Split = Literal["train", "test"]

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})

_VALID_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_ID_OTHER = re.compile(r"[^A-Za-z0-9_.\-]+")
# Latin letters that Unicode does not decompose into a base letter and an accent.
_NO_DECOMPOSITION = str.maketrans({"ß": "ss", "æ": "ae", "Æ": "AE", "ø": "o", "Ø": "O", "œ": "oe", "Œ": "OE",
                                   "đ": "d", "Đ": "D", "ł": "l", "Ł": "L", "þ": "th", "Þ": "Th", "ð": "d", "ı": "i"})
# Names a group cannot have inside a Zarr 3 store (its own metadata document), in any case: a store
# copied to a case-insensitive file system must keep working.
RESERVED_IDS = frozenset({"zarr.json"})
MAX_ID_LENGTH = 120  # well under the 255-byte file-name limit, with room for a suffix
# What a user's own camera folder should look like (said when a folder has no training footage).
FOLDER_LAYOUT = ("expected a folder with train/ holding normal footage, test/ holding the footage to check, "
                 "and optionally labels.csv with columns video,frame,label")


def video_id_for(relative: str | PurePath) -> str:
    """The store-safe video id of the file or frame folder at `relative` (its path inside a dataset
    or an archive); the one rule used everywhere.

    Accents are folded to ASCII (NFKD: `café-entrée.mp4` -> `cafe-entree`), a video extension is
    dropped, every run of characters other than letters, digits, '_', '.', '-' becomes '-', and path
    separators become '_' (`2026-11-20/Camera 1 (north).mp4` -> `2026-11-20_Camera-1-north`). An id
    longer than `MAX_ID_LENGTH` is cut and ends in a hash of the path. Raises `DatasetLayoutError`
    when no letter or digit is left (a name written only in a non-Latin script, say).
    """
    text = PurePath(relative).as_posix() if isinstance(relative, PurePath) else str(relative)
    parts = [p for p in text.replace("\\", "/").split("/") if p]
    if parts and Path(parts[-1]).suffix.lower() in VIDEO_EXTENSIONS:
        parts[-1] = parts[-1][: -len(Path(parts[-1]).suffix)]
    ascii_parts = (unicodedata.normalize("NFKD", p.translate(_NO_DECOMPOSITION)).encode("ascii", "ignore").decode() for p in parts)
    vid = "_".join(filter(None, (_ID_OTHER.sub("-", p).strip("-") for p in ascii_parts))).lstrip("_.-")
    if not any(c.isalnum() for c in vid):
        raise DatasetLayoutError(f"no letter or digit of {text!r} is left in an ASCII video id; rename it")
    if len(vid) > MAX_ID_LENGTH:
        vid = f"{vid[: MAX_ID_LENGTH - 7]}-{_path_hash(text)}"
    return vid


def unique_ids(candidates: dict[str, str | None]) -> tuple[dict[str, str], list[str]]:
    """Distinct ids for the relative paths in `candidates` (path -> its `video_id_for` id, or None
    where that found nothing usable), and one warning line per path whose id had to change.

    A path without a usable id gets `video-` and six hex digits of a hash of the path. Ids that
    differ only in case collide too (a store must survive a case-insensitive file system). Of the
    paths sharing an id, the first in path order keeps it; each other gets '-' and six hex digits
    of a hash of its own path, so its id does not depend on which other files are there.
    """
    warnings, groups = [], {}
    wanted = dict(candidates)
    for path in sorted(wanted):
        if wanted[path] is None:
            wanted[path] = f"video-{_path_hash(path)}"
            warnings.append(f"{path!r} has no ASCII letter or digit in its name; stored as {wanted[path]!r}")
        groups.setdefault(wanted[path].casefold(), []).append(path)  # type: ignore[union-attr]
    ids = {}
    for first, *others in groups.values():
        ids[first] = wanted[first]
        for path in others:
            ids[path] = f"{wanted[path]}-{_path_hash(path)}"
            warnings.append(f"{path!r} and {first!r} both make video id {ids[first]!r}; {path!r} is stored as {ids[path]!r}")
    return ids, warnings  # type: ignore[return-value]


def try_video_id(relative: str | PurePath) -> str | None:
    """`video_id_for(relative)`, or None when the name leaves nothing usable (see `unique_ids`)."""
    try:
        return video_id_for(relative)
    except DatasetLayoutError:
        return None


def _path_hash(path: str) -> str:
    return hashlib.blake2b(path.encode(errors="surrogateescape"), digest_size=3).hexdigest()


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
    relative: str | None = None  # the path inside the dataset, as the user named it (kept in the store)

    def __post_init__(self) -> None:
        if not _VALID_ID.match(self.video_id) or len(self.video_id) > MAX_ID_LENGTH:
            raise DatasetLayoutError(
                f"{self.uri}: video id {self.video_id!r} is not usable as a store group name "
                f"(letters, digits, '_', '-', '.'; not starting with '.' or '_'; at most {MAX_ID_LENGTH} characters)"
            )
        if self.video_id.casefold() in RESERVED_IDS:
            raise DatasetLayoutError(f"{self.uri}: video id {self.video_id!r} is a name the Zarr store reserves; rename it")
        if self.split not in ("train", "test"):
            raise DatasetLayoutError(f"{self.uri}: split must be 'train' or 'test', got {self.split!r}")
        if self.kind == "frames" and not self.frame_files:
            raise DatasetLayoutError(f"{self.uri}: frame folder has no image files")
        if self.labels is not None and self.label_ranges is not None:
            raise DatasetLayoutError(f"{self.uri}: give labels or label_ranges, not both")

    @property
    def files(self) -> tuple[str, ...]:
        """The files the source's frames come from: its frame files, or the video file."""
        return self.frame_files if self.kind == "frames" else (self.uri,)  # type: ignore[return-value]

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


@dataclass
class Listing:
    """What an adapter found in a dataset folder: the usable videos, one line for each video it
    found but cannot use (by relative path), and one per video whose id had to change."""

    videos: list[VideoSource] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def natural_key(name: str) -> list[object]:
    """Sort key that orders 'frame2' before 'frame10'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def frame_files(folder: Path) -> tuple[str, ...]:
    """The image files of a frame folder in natural order, as absolute paths (all one extension)."""
    # Dot-files are skipped: copies unpacked on a Mac carry a `._000.tif` resource fork beside
    # every frame, with an image extension but no image inside.
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise DatasetLayoutError(f"{folder}: cannot read this frame folder ({exc.strerror})") from exc
    files = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
    suffixes = {p.suffix.lower() for p in files}
    if len(suffixes) > 1:
        raise DatasetLayoutError(f"{folder}: frame folder mixes image types {sorted(suffixes)}")
    return tuple(str(p) for p in sorted(files, key=lambda p: natural_key(p.name)))


def frames_source(video_id: str, split: Split, folder: Path, **options: object) -> VideoSource:
    """A `VideoSource` for a folder of frame images (`options`: labels, label_ranges, relative)."""
    return VideoSource(video_id, split, str(folder), "frames", frame_files=frame_files(folder), **options)  # type: ignore[arg-type]


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
