"""The one luma (gray) conversion of the project: ITU-R BT.601 weights, the ones FFmpeg's gray output
and OpenCV's RGB2GRAY use. Model input (`tasks/runtime/model_input.py`, torch) and the validation
sets' background model (`tasks/evaluation/validation_scene.py`, numpy) both take their weights here."""

from __future__ import annotations

import numpy as np

LUMA = (0.299, 0.587, 0.114)  # R, G, B

# OpenCV's fixed point for uint8: weights in units of 2^-15, blue taking the rounding rest so that
# they sum to one exactly, and round half up; `luma` gives OpenCV's RGB2GRAY byte for byte.
_SHIFT = 15
_RED, _GREEN = round(LUMA[0] * 2**_SHIFT), round(LUMA[1] * 2**_SHIFT)
_BLUE = 2**_SHIFT - _RED - _GREEN


def luma(frames: np.ndarray) -> np.ndarray:
    """(..., C) uint8 frames, C = 1 (gray, returned as is) or 3 (RGB) -> (...) uint8 gray levels."""
    if frames.shape[-1] == 1:
        return frames[..., 0]
    if frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"luma: expected uint8 frames with 1 or 3 channels, got {frames.dtype} {frames.shape}")
    y = frames[..., 0] * np.uint32(_RED)  # uint32, a channel at a time (no full-size copy)
    y += frames[..., 1] * np.uint32(_GREEN)
    y += frames[..., 2] * np.uint32(_BLUE)
    y += np.uint32(1 << (_SHIFT - 1))
    return (y >> _SHIFT).astype(np.uint8)
