"""UCSD Ped1/Ped2 (Mahadevan et al., CVPR 2010) in its two layouts.

Official archive: `<root>/Train/TrainNNN/*.tif`, `<root>/Test/TestNNN/*.tif`, frame labels in
`Test/UCSDpedN.m`. Common re-distribution (MNAD, HF2-VAD, ...): `<root>/training/frames/NN/`,
`<root>/testing/frames/NN/`, labels in `test_labels.csv` or `pedN.mat`. Both layouts give the
official ids `Train001`, `Test001`, ... Positional label files (`.m`, `.mat`) must have exactly one
entry per test video; the keyed CSV may leave test videos out (unknown labels) but may not name a
video that does not exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from vad.tasks.sources.datasets._base import (
    VideoSource,
    frames_source,
    load_mat,
    natural_key,
    read_labels_csv,
)

from vad.errors import DatasetLayoutError

_TRAIN = re.compile(r"Train\d{3}")
_TEST = re.compile(r"Test\d{3}")  # fullmatch, so the `TestNNN_gt` mask folders are left out
_NUMBER = re.compile(r"\d+")
_M_FILE = re.compile(r"UCSDped\d*\.m", re.IGNORECASE)
_MAT_FILE = re.compile(r"ped\d\.mat", re.IGNORECASE)
_M_HEADER = re.compile(r"TestVideoFile\s*=\s*\{\s*\}\s*;?")
_M_ENTRY = re.compile(r"TestVideoFile\{end\+1\}\.gt_frame\s*=\s*\[([^\]]*)\]\s*;?")
_M_RANGE = re.compile(r"(\d+)(?::(\d+))?")

Ranges = tuple[tuple[int, int], ...]
Labels = dict[str, dict[str, object]]  # test video id -> VideoSource keyword (labels or label_ranges)


def detect(root: Path) -> bool:
    """True for either UCSD layout; ShanghaiTech (no `training/frames`) does not match."""
    return _is_official(root) or _is_common(root)


def list_videos(root: Path) -> list[VideoSource]:
    """Every Ped1/Ped2 train and test video as a frame folder, test videos labelled when a label file exists."""
    if _is_official(root):
        train, test = _numbered(root / "Train", _TRAIN), _numbered(root / "Test", _TEST)
        labels = _official_labels(root / "Test", test)
    elif _is_common(root):
        train = _renumbered(root / "training" / "frames", "Train")
        test = _renumbered(root / "testing" / "frames", "Test")
        labels = _common_labels(root, test)
    else:
        raise DatasetLayoutError(
            f"{root}: not a UCSD layout (expected Train/TrainNNN and Test/TestNNN, "
            "or training/frames/NN and testing/frames/NN)"
        )
    videos = [frames_source(vid, "train", folder) for vid, folder in train.items()]
    videos += [frames_source(vid, "test", folder, **labels.get(vid, {})) for vid, folder in test.items()]
    return videos


def _is_official(root: Path) -> bool:
    return _has_subfolder(root / "Train", _TRAIN) and _has_subfolder(root / "Test", _TEST)


def _is_common(root: Path) -> bool:
    return _has_subfolder(root / "training" / "frames", _NUMBER) and _has_subfolder(
        root / "testing" / "frames", _NUMBER
    )


def _has_subfolder(folder: Path, pattern: re.Pattern[str]) -> bool:
    try:
        return folder.is_dir() and any(p.is_dir() and pattern.fullmatch(p.name) for p in folder.iterdir())
    except OSError:  # an unreadable subfolder means "not my layout"; list_videos reports it
        return False


def _numbered(folder: Path, pattern: re.Pattern[str]) -> dict[str, Path]:
    """Subfolders whose whole name matches `pattern`, by name, in natural order."""
    found = [p for p in folder.iterdir() if p.is_dir() and pattern.fullmatch(p.name)]
    return {p.name: p for p in sorted(found, key=lambda p: natural_key(p.name))}


def _renumbered(folder: Path, prefix: str) -> dict[str, Path]:
    """The common layout's `NN` folders under their official ids (`01` -> `Train001`); two folders
    of one number (`1` and `01`) are an error, not one video silently left out."""
    out: dict[str, Path] = {}
    for path in _numbered(folder, _NUMBER).values():
        vid = f"{prefix}{int(path.name):03d}"
        if vid in out:
            raise DatasetLayoutError(f"{path}: makes video id {vid!r}, as {out[vid]} does")
        out[vid] = path
    return out


def _label_file(folder: Path, pattern: re.Pattern[str]) -> Path | None:
    """The one file in `folder` whose name matches `pattern`; None if none, an error if several."""
    found = sorted(p for p in folder.iterdir() if p.is_file() and pattern.fullmatch(p.name))
    if len(found) > 1:
        raise DatasetLayoutError(f"{folder}: more than one label file: {[p.name for p in found]}")
    return found[0] if found else None


def _official_labels(test_dir: Path, test: dict[str, Path]) -> Labels:
    path = _label_file(test_dir, _M_FILE)
    return _positional(path, _read_m(path), test) if path else {}


def _common_labels(root: Path, test: dict[str, Path]) -> Labels:
    csv_path = root / "test_labels.csv"
    if csv_path.is_file():
        # Preferred over pedN.mat: per-frame labels with explicitly 0-based frames, and the same file
        # format as the other datasets; the .mat ranges are 1-based by convention only (on the staged
        # Ped2 copy both give identical labels).
        labels: Labels = {}
        for key, array in read_labels_csv(csv_path).items():
            vid = f"Test{int(key):03d}" if key.isdigit() else key
            if vid not in test:
                raise DatasetLayoutError(
                    f"{csv_path}: labels for video {key!r}, which is not in {root / 'testing' / 'frames'}"
                )
            labels[vid] = {"labels": array}
        return labels
    path = _label_file(root, _MAT_FILE)
    return _positional(path, _read_mat(path), test) if path else {}


def _positional(path: Path, entries: list[Ranges], test: dict[str, Path]) -> Labels:
    """Entry i of a positional label file labels `Test{i+1:03d}`; counts and names must agree."""
    if len(entries) != len(test):
        raise DatasetLayoutError(f"{path}: {len(entries)} label entries for {len(test)} test videos")
    labels: Labels = {}
    for i, ranges in enumerate(entries, start=1):
        vid = f"Test{i:03d}"
        if vid not in test:
            raise DatasetLayoutError(f"{path}: entry {i} labels {vid}, which does not exist")
        labels[vid] = {"label_ranges": ranges}
    return labels


def _read_m(path: Path) -> list[Ranges]:
    """`TestVideoFile{end+1}.gt_frame = [5:90, 140:200];` lines: 1-based inclusive ranges per test video."""
    entries: list[Ranges] = []
    for n, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("%") or _M_HEADER.fullmatch(line):
            continue
        match = _M_ENTRY.fullmatch(line)
        tokens = re.split(r"[,\s]+", re.sub(r"\s*:\s*", ":", match.group(1)).strip()) if match else []
        parsed = [_M_RANGE.fullmatch(t) for t in tokens if t]
        if match is None or not all(parsed):
            raise DatasetLayoutError(
                f"{path}:{n}: cannot parse {line!r} (expected TestVideoFile{{end+1}}.gt_frame = [a:b, ...];)"
            )
        pairs = [(int(m.group(1)), int(m.group(2) or m.group(1))) for m in parsed if m]
        entries.append(_one_based(pairs, f"{path}:{n}"))
    return entries


def _read_mat(path: Path) -> list[Ranges]:
    """`gt`, a 1xN cell of 2xK [start; end] arrays (1-based inclusive), one per test video."""
    gt = load_mat(path, "gt")
    if gt.dtype != object:
        raise DatasetLayoutError(f"{path}: 'gt' must be a cell array with one entry per test video")
    entries: list[Ranges] = []
    for i, cell in enumerate(gt.ravel(), start=1):
        # int64: the real ped2.mat stores uint8, where `end + 1` would wrap at 255
        array = np.asarray(cell, dtype=np.int64)
        if array.size == 0:
            entries.append(())
            continue
        if array.ndim == 1 and array.size == 2:
            array = array.reshape(2, 1)
        if array.ndim != 2 or array.shape[0] != 2:
            raise DatasetLayoutError(f"{path}: gt entry {i} has shape {array.shape}, expected 2xK [start; end] rows")
        entries.append(_one_based(list(zip(array[0].tolist(), array[1].tolist())), f"{path}: gt entry {i}"))
    return entries


def _one_based(pairs: list[tuple[int, int]], where: str) -> Ranges:
    """1-based inclusive (first, last) frame ranges as 0-based half-open ranges."""
    for first, last in pairs:
        if not 1 <= first <= last:
            raise DatasetLayoutError(f"{where}: {first}:{last} is not a 1-based frame range")
    return tuple((first - 1, last) for first, last in pairs)

