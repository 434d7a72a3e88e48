"""CUHK Avenue (Lu et al., ICCV 2013).

Layout: `<root>/training_videos/NN.avi`, `<root>/testing_videos/NN.avi`, and the official pixel
masks `testing_label_mask/N_label.mat` at the root or under `ground_truth_demo/` (where the
official `ground_truth_demo.zip` puts them). A frame is anomalous when any pixel of its mask is set.
Test videos without a mask file get unknown labels; a mask file for a video that does not exist
is an error. Ids: `train_01`, ..., `test_01`, ...
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from vad.tasks.sources.datasets._base import (
    VIDEO_EXTENSIONS,
    VideoSource,
    load_mat,
    natural_key,
    require_dir,
)

from vad.errors import DatasetLayoutError

_LABEL_FILE = re.compile(r"(\d+)_label\.mat")
_LABEL_DIRS = ("testing_label_mask", "ground_truth_demo/testing_label_mask")


def detect(root: Path) -> bool:
    """True when both `training_videos/` and `testing_videos/` exist."""
    return (root / "training_videos").is_dir() and (root / "testing_videos").is_dir()


def list_videos(root: Path) -> list[VideoSource]:
    """Every Avenue video file; test videos carry per-frame labels from their mask file, if any.

    Loading the masks decompresses about 3.5 GB (15,324 frames of 360x640) and takes ~15 s.
    """
    train = _numbered_videos(require_dir(root / "training_videos", "Avenue training folder"))
    test = _numbered_videos(require_dir(root / "testing_videos", "Avenue testing folder"))
    labels = _mask_labels(root, test)
    videos = [VideoSource(f"train_{n:02d}", "train", str(p), "file") for n, p in train.items()]
    videos += [VideoSource(f"test_{n:02d}", "test", str(p), "file", labels=labels.get(n)) for n, p in test.items()]
    return videos


def _numbered_videos(folder: Path) -> dict[int, Path]:
    """Video files named by number (`01.avi`), keyed by that number."""
    videos: dict[int, Path] = {}
    for path in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in VIDEO_EXTENSIONS:
            continue
        if not path.stem.isdigit():
            raise DatasetLayoutError(f"{path}: Avenue videos are named by number (01.avi, 02.avi, ...)")
        if int(path.stem) in videos:
            raise DatasetLayoutError(f"{path}: same video number as {videos[int(path.stem)]}")
        videos[int(path.stem)] = path
    return videos


def _mask_labels(root: Path, test: dict[int, Path]) -> dict[int, np.ndarray]:
    folder = next((root / d for d in _LABEL_DIRS if (root / d).is_dir()), None)
    if folder is None:
        return {}
    labels: dict[int, np.ndarray] = {}
    for path in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        match = _LABEL_FILE.fullmatch(path.name)
        if match is None or not path.is_file():
            continue
        number = int(match.group(1))
        if number not in test:
            raise DatasetLayoutError(
                f"{path}: labels for test video {number}, which is not in {root / 'testing_videos'}"
            )
        masks = load_mat(path, "volLabel")  # 1xN cell of HxW masks, one per frame
        if masks.dtype != object or masks.size == 0:
            raise DatasetLayoutError(f"{path}: 'volLabel' must be a non-empty cell array of frame masks")
        labels[number] = np.array([np.any(np.asarray(mask) > 0) for mask in masks.ravel()], dtype=np.int8)
    return labels

