"""Clips are index windows over a video's frames, never copies."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vad.errors import ParameterError

if TYPE_CHECKING:
    from vad.storage._clipstore import Video


def clip_count(n_frames: int, length: int, stride: int) -> int:
    """floor((N - T) / S) + 1 clips of length T at stride S fit in N frames (0 when N < T)."""
    _check(length, stride)
    return 0 if n_frames < length else (n_frames - length) // stride + 1


def clip_windows(n_frames: int, length: int, stride: int) -> Iterator[tuple[int, int]]:
    """(start, stop) frame windows of every clip, in order; stop is exclusive."""
    for i in range(clip_count(n_frames, length, stride)):
        yield i * stride, i * stride + length


def _check(length: int, stride: int) -> None:
    if length < 1 or stride < 1:
        raise ParameterError(f"clip length and stride must be >= 1, got length={length}, stride={stride}")


@dataclass(frozen=True)
class Clip:
    """Clip `index` of a video: frames [start, stop). Reading touches only those frames."""

    video: Video
    index: int
    start: int
    stop: int

    def read(self) -> np.ndarray:
        """The clip's frames, (T, H, W, C) uint8."""
        return self.video.read(self.start, self.stop)

    @property
    def labels(self) -> np.ndarray:
        """Per-frame labels of the clip, (T,) int8 (-1 unknown)."""
        return self.video.labels[self.start : self.stop]

    @property
    def scene_cut(self) -> bool:
        """Whether a scene cut falls inside the clip (between two of its frames)."""
        return bool(self.video.scene_cut[self.start + 1 : self.stop].any())
