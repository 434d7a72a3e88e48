"""Motion analysis for the validation-set maker (`vad.tasks.evaluation.validation`): where and when
one piece of normal footage moves, with no background model and no object detector. (The large
model `objects` finds objects with a median background and connected components; anomalies placed
and cut with that detector would flatter it.)

Measured on a blurred luma downsampled to at most `COARSE_ROWS` rows (cells of `cell` pixels):

    activity (h, w)     per-pixel temporal standard deviation of the luma: where the footage moves
    motion (N, h, w)    |g_t - g_(t-1)| less twice its median over the piece (the sensor noise),
                        zero below; motion[0] = 0: when and where it moves

Windows (squares, a fraction of the frame height) go where `motion` summed over the frames an
anomaly uses is high. Pastes take their shape from three-frame differencing at full size (`alpha`):
a pixel belongs to what moves at frame u when it differs from both frame u - lag and frame u + lag.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from vad.tasks.sources.luma import luma

COARSE_ROWS = 60
BEST_FRACTION = 0.5  # windows are drawn among those with at least this fraction of the best one's motion
ALPHA_LAG_S = 0.2  # three-frame differencing: frames this far before and after (at least 1 frame)
ALPHA_PEAK = 0.3  # a pixel whose difference reaches this fraction of the frame's peak is fully opaque


@dataclass
class Piece:
    """One piece of held-out normal footage (a whole video or a segment of one) and its motion."""

    frames: np.ndarray  # (N, H, W, C) uint8 as stored
    fps: float
    gray: np.ndarray = field(init=False)  # (N, H, W) uint8 luma
    cell: int = field(init=False)  # full-size px per coarse cell
    activity: np.ndarray = field(init=False)  # (h, w) float32
    motion: np.ndarray = field(init=False)  # (N, h, w) float32
    noise: float = field(init=False)  # median |g_t - g_(t-1)| at full size, blurred: the sensor noise

    def __post_init__(self) -> None:
        self.gray = luma(self.frames)
        n, h, w = self.gray.shape
        self.cell = max(1, -(-h // COARSE_ROWS))
        size = (max(1, w // self.cell), max(1, h // self.cell))
        coarse = np.stack([cv2.GaussianBlur(cv2.resize(g, size, interpolation=cv2.INTER_AREA).astype(np.float32), (0, 0), 1.0)
                           for g in self.gray])
        self.activity = coarse.std(axis=0)
        diff = np.zeros_like(coarse)
        diff[1:] = np.abs(np.diff(coarse, axis=0))
        floor = 2.0 * float(np.median(diff[1:])) if n > 1 else 0.0
        self.motion = np.maximum(diff - floor, 0.0)
        sample = self.gray[:: max(1, n // 16)].astype(np.float32)
        blurred = np.stack([cv2.GaussianBlur(g, (0, 0), 1.0) for g in sample])
        self.noise = float(np.median(np.abs(np.diff(blurred, axis=0)))) if len(sample) > 1 else 1.0

    @property
    def n(self) -> int:
        return len(self.frames)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) at full size."""
        return self.gray.shape[1], self.gray.shape[2]

    def lag(self) -> int:
        return max(1, round(ALPHA_LAG_S * self.fps))

    def window(self, first: int, stop: int, side: int, rng: np.random.Generator,
               avoid: tuple[int, int] | None = None) -> tuple[int, int, float] | None:
        """(x0, y0, motion) of a `side` x `side` window (full-size top-left corner) drawn where the footage
        moves most over frames [first, stop), weighted by that motion; None when nothing moves there.
        `avoid`: a window corner whose window the new one must not overlap."""
        return self._draw(self.motion[first:stop].sum(axis=0), side, rng, avoid)

    def busy_window(self, side: int, rng: np.random.Generator, avoid: tuple[int, int] | None = None) -> tuple[int, int, float] | None:
        """Like `window`, weighted by the activity of the whole piece (where things move at any time)."""
        return self._draw(self.activity, side, rng, avoid)

    def _draw(self, energy: np.ndarray, side: int, rng: np.random.Generator, avoid: tuple[int, int] | None):
        H, W = self.size
        c = self.cell
        k = max(1, round(side / c))
        sums = cv2.boxFilter(energy.astype(np.float32), -1, (k, k), normalize=False, borderType=cv2.BORDER_CONSTANT)
        ys, xs = np.mgrid[0 : sums.shape[0], 0 : sums.shape[1]]
        x0 = np.clip(xs * c + c // 2 - side // 2, 0, W - side)
        y0 = np.clip(ys * c + c // 2 - side // 2, 0, H - side)
        ok = np.ones(sums.shape, bool)
        if avoid is not None:  # no overlap with the other window
            ok = (np.abs(x0 - avoid[0]) >= side) | (np.abs(y0 - avoid[1]) >= side)
        best = float(sums[ok].max()) if ok.any() else 0.0
        if best <= 0:
            return None
        pick = np.flatnonzero((ok & (sums >= BEST_FRACTION * best)).ravel())
        weights = sums.ravel()[pick].astype(np.float64)
        i = int(rng.choice(pick, p=weights / weights.sum()))
        return int(x0.ravel()[i]), int(y0.ravel()[i]), float(sums.ravel()[i])

    def alpha(self, u: int, x0: int, y0: int, side: int) -> np.ndarray:
        """(side, side) float32 in [0, 1]: what moves at frame u inside the window (three-frame
        differencing, blurred by side / 16 so that a uniform object's inside fills)."""
        lag = self.lag()
        g = self.gray[:, y0 : y0 + side, x0 : x0 + side].astype(np.float32)
        sides = [np.abs(g[u] - g[v]) for v in (u - lag, u + lag) if 0 <= v < self.n]  # one at an end
        d = np.minimum(*sides) if len(sides) == 2 else sides[0]
        d = cv2.GaussianBlur(d, (0, 0), max(1.0, side / 16))
        lo = 2.0 * self.noise
        hi = max(2.0 * lo, ALPHA_PEAK * float(d.max()))
        return np.clip((d - lo) / (hi - lo), 0.0, 1.0)


def taper(h: int, w: int, edge: int) -> np.ndarray:
    """(h, w) float32: 1 inside, falling smoothly (raised cosine) to 0 over `edge` px at each border."""
    def ramp(n: int) -> np.ndarray:
        e = max(1, min(edge, n // 2))
        r = np.ones(n, np.float32)
        t = (np.arange(e, dtype=np.float32) + 0.5) / e
        r[:e] = 0.5 - 0.5 * np.cos(np.pi * t)
        r[n - e :] = r[:e][::-1]
        return r

    return np.outer(ramp(h), ramp(w))
