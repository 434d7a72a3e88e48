"""Calibration fitted on held-out normal clips: percentile ranks, threshold, OOD and instability levels.

Percentile rank maps a raw score onto [0, 1] against the normal score distribution. The n sorted
normal scores sit at ranks i / (n + 1) (i = 1..n), ranks between them are interpolated linearly,
and beyond the extremes hyperbolic tails (1 - (1 - r_max) s / (s + x - max), s the scores' standard
deviation) keep the map strictly increasing: a score far above every
normal one still ranks above one just above them, so calibrating never creates ties (a ranking, and
so AUC, is the same before and after). The tail scale is the normal scores' standard deviation.

With the default quantile 0.95 the threshold is the raw score whose rank is 0.95; in percentile
space the threshold is the quantile itself. Example: 19 normal scores 10, 20, ..., 190 rank at
0.05, 0.10, ..., 0.95, so score 100 ranks 0.5, score 15 ranks 0.075 and the threshold is 190.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vad.errors import CheckpointError, ParameterError


def _sorted_1d(values: Any, what: str) -> np.ndarray:
    arr = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if arr.size == 0:
        raise ParameterError(f"calibration needs at least one {what}; none were given")
    if not np.isfinite(arr).all():
        raise ParameterError(f"calibration {what}s contain NaN or infinite values (did training diverge?)")
    return arr


@dataclass(frozen=True)
class EmpiricalRank:
    """Strictly increasing map of values onto (0, 1) from a sample (see the module docstring)."""

    sorted_values: np.ndarray  # (n,) ascending

    @classmethod
    def fit(cls, values: Any, what: str = "score") -> EmpiricalRank:
        return cls(_sorted_1d(values, what))

    @property
    def n(self) -> int:
        return int(self.sorted_values.size)

    @property
    def _scale(self) -> float:
        std = float(self.sorted_values.std())
        return std if std > 0 else max(abs(float(self.sorted_values[0])), 1.0) * 1e-3

    def _positions(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct sorted values and their ranks (tied values share the middle of their positions)."""
        s, n = self.sorted_values, self.n
        positions = np.arange(1, n + 1) / (n + 1)
        uniq, first = np.unique(s, return_index=True)
        last = np.append(first[1:], n) - 1
        return uniq, (positions[first] + positions[last]) / 2

    def rank(self, values: Any) -> np.ndarray:
        """Percentile rank of each value, in (0, 1)."""
        x = np.asarray(values, dtype=np.float64)
        uniq, mid = self._positions()
        lo, hi, scale = uniq[0], uniq[-1], self._scale
        inner = np.interp(x, uniq, mid) if uniq.size > 1 else np.full(x.shape, mid[0])
        # hyperbolic tails: strictly monotone and, unlike exponential ones, never rounding to 0 or 1
        below = mid[0] * scale / (scale + np.maximum(lo - x, 0.0))
        above = 1.0 - (1.0 - mid[-1]) * scale / (scale + np.maximum(x - hi, 0.0))
        return np.where(x < lo, below, np.where(x > hi, above, inner))

    def quantile(self, q: float) -> float:
        """The value whose rank is q: the exact inverse of `rank`, tails included."""
        if not 0.0 < q < 1.0:
            raise ParameterError(f"quantile must be in (0, 1), got {q}")
        uniq, mid = self._positions()
        scale = self._scale
        if q < mid[0]:
            return float(uniq[0] - scale * (mid[0] / q - 1.0))
        if q > mid[-1]:
            return float(uniq[-1] + scale * ((1.0 - mid[-1]) / (1.0 - q) - 1.0))
        return float(np.interp(q, mid, uniq)) if uniq.size > 1 else float(uniq[0])


def window_variances(ranks: np.ndarray, window: int) -> np.ndarray:
    """Variance of every run of `window` consecutive clip ranks of one video (empty when shorter)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if window < 2:
        raise ParameterError(f"instability window must be >= 2 clips, got {window}")
    if ranks.size < window:
        return np.empty(0)
    return np.lib.stride_tricks.sliding_window_view(ranks, window).var(axis=1)


def cosine_distances(embeddings: np.ndarray, centroid: np.ndarray) -> np.ndarray:
    """1 - cosine similarity of each embedding (N, D) to the centroid (D,)."""
    e = np.asarray(embeddings, dtype=np.float64)
    c = np.asarray(centroid, dtype=np.float64)
    norms = np.linalg.norm(e, axis=1) * np.linalg.norm(c)
    return 1.0 - (e @ c) / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class Calibration:
    """Everything the router needs from normal data, fitted on held-out normal clips.

    - `scores`: raw clip scores (their percentile ranks are the calibrated scores);
    - `quantile`: the threshold in percentile space (0.95 by default); `threshold` is the raw score;
    - `centroid` and `ood`: the mean embedding and the cosine distances to it;
    - `instability` and `window`: variances of `window` consecutive calibrated clip scores;
    - `frames`: raw per-frame scores of the same clips, which `calibrate_frames` ranks against (a
      frame's score has heavier tails than a clip's, the mean of its frames); None in checkpoints
      written before it was fitted.
    """

    scores: EmpiricalRank
    quantile: float
    centroid: np.ndarray
    ood: EmpiricalRank
    instability: EmpiricalRank
    window: int
    frames: EmpiricalRank | None = None

    @classmethod
    def fit(
        cls, *, scores: Any, embeddings: Any, video_ids: Any, quantile: float = 0.95, window: int = 4,
        frame_scores: Any = None,
    ) -> Calibration:
        """Fit from clip scores, embeddings (N, D) and the video of each clip, clips in stream order,
        and, when given, the clips' per-frame scores (N, T)."""
        if not 0.0 < quantile < 1.0:
            raise ParameterError(f"calibration quantile must be in (0, 1), got {quantile}")
        raw = np.asarray(scores, dtype=np.float64).ravel()
        emb = np.asarray(embeddings, dtype=np.float64)
        vids = np.asarray(video_ids)
        if emb.ndim != 2 or emb.shape[0] != raw.size or vids.size != raw.size:
            raise ParameterError(f"calibration: {raw.size} scores, {emb.shape[0] if emb.ndim else 0} embeddings and {vids.size} video ids must agree")
        rank = EmpiricalRank.fit(raw)
        centroid = emb.mean(axis=0)
        ranks = rank.rank(raw)
        variances = [window_variances(ranks[vids == v], window) for v in dict.fromkeys(vids.tolist())]
        pooled = np.concatenate(variances) if variances else np.empty(0)
        if pooled.size == 0:
            raise ParameterError(
                f"calibration: no held-out video has {window} clips, so the instability level cannot be fitted; "
                "hold out longer videos or lower the window"
            )
        return cls(
            scores=rank, quantile=quantile, centroid=centroid,
            ood=EmpiricalRank.fit(cosine_distances(emb, centroid), "cosine distance"),
            instability=EmpiricalRank.fit(pooled, "window variance"), window=window,
            frames=None if frame_scores is None else EmpiricalRank.fit(frame_scores, "frame score"),
        )

    @property
    def threshold(self) -> float:
        """The raw clip score at the calibration quantile."""
        return self.scores.quantile(self.quantile)

    def calibrate(self, raw: Any) -> np.ndarray:
        """Raw scores -> percentile ranks in (0, 1); compare with `quantile`."""
        return self.scores.rank(raw)

    def calibrate_frames(self, raw: Any) -> np.ndarray:
        """Raw per-frame scores -> percentile ranks against the held-out clips' per-frame scores."""
        if self.frames is None:
            raise CheckpointError(
                "this checkpoint has no frame-level calibration (it predates it): retrain it to score with frame mode 'frame'"
            )
        return self.frames.rank(raw)

    def to_state(self) -> dict[str, Any]:
        """Tensors and numbers only, so `torch.load(weights_only=True)` reads it back."""
        return {
            "scores": torch.from_numpy(self.scores.sorted_values.copy()),
            "quantile": self.quantile,
            "threshold": self.threshold,
            "centroid": torch.from_numpy(self.centroid.copy()),
            "ood_distances": torch.from_numpy(self.ood.sorted_values.copy()),
            "instability_variances": torch.from_numpy(self.instability.sorted_values.copy()),
            "window": self.window,
            **({} if self.frames is None else {"frame_scores": torch.from_numpy(self.frames.sorted_values.copy())}),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Calibration:
        return cls(
            scores=EmpiricalRank(state["scores"].numpy()), quantile=float(state["quantile"]),
            centroid=state["centroid"].numpy(), ood=EmpiricalRank(state["ood_distances"].numpy()),
            instability=EmpiricalRank(state["instability_variances"].numpy()), window=int(state["window"]),
            frames=EmpiricalRank(state["frame_scores"].numpy()) if "frame_scores" in state else None,
        )
