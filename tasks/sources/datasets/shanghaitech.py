"""ShanghaiTech Campus (Luo et al., ICCV 2017).

Layout: training videos `<root>/training/videos/<id>.avi` (e.g. `01_001`), test frame folders
`<root>/testing/frames/<id>/*.jpg` (e.g. `01_0014`), and per-frame 0/1 labels
`test_frame_mask/<id>.npy` under `testing/` or at the root. Test videos without a mask get unknown
labels; a mask for a video that does not exist is an error. Ids are the names by `video_id_for`
(the official ones unchanged; a renamed copy with a space in its name still ingests).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from vad.tasks.sources.datasets._base import (
    VIDEO_EXTENSIONS,
    VideoSource,
    frames_source,
    natural_key,
    require_dir,
    video_id_for,
)

from vad.errors import DatasetLayoutError

_MASK_DIRS = ("testing/test_frame_mask", "test_frame_mask")


def detect(root: Path) -> bool:
    """True when `training/videos/` and `testing/frames/` both exist."""
    return (root / "training" / "videos").is_dir() and (root / "testing" / "frames").is_dir()


def list_videos(root: Path) -> list[VideoSource]:
    """Training video files and labelled test frame folders."""
    train_dir = require_dir(root / "training" / "videos", "ShanghaiTech training videos folder")
    test_dir = require_dir(root / "testing" / "frames", "ShanghaiTech test frames folder")
    videos = [
        VideoSource(video_id_for(p.name), "train", str(p), "file")
        for p in _visible(train_dir)
        if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
    ]
    test = {p.name: p for p in _visible(test_dir) if p.is_dir()}
    labels = _mask_labels(root, test)
    videos += [frames_source(video_id_for(name), "test", folder, labels=labels.get(name)) for name, folder in test.items()]
    return videos


def _visible(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: natural_key(p.name))


def _mask_labels(root: Path, test: dict[str, Path]) -> dict[str, np.ndarray]:
    folder = next((root / d for d in _MASK_DIRS if (root / d).is_dir()), None)
    if folder is None:
        return {}
    labels: dict[str, np.ndarray] = {}
    for path in _visible(folder):
        if path.suffix != ".npy" or not path.is_file():
            continue
        if path.stem not in test:
            raise DatasetLayoutError(
                f"{path}: labels for video {path.stem!r}, which is not in {root / 'testing' / 'frames'}"
            )
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DatasetLayoutError(f"{path}: not a readable .npy array ({exc})") from exc
        if array.ndim != 1 or not np.isin(array, (0, 1)).all():
            raise DatasetLayoutError(f"{path}: expected a 1-D array of 0/1 frame labels, got shape {array.shape}")
        labels[path.stem] = array.astype(np.int8)
    return labels
