"""Frame-level detection metrics: AUC-ROC, EER and average precision, in three views.

- **micro**: all frames of a dataset pooled (the headline);
- **macro**: the mean over videos that have both normal and anomalous frames;
- **per video**: every video listed; a video with one class gets undefined (NaN) metrics and
  `defined = False`, never silently dropped from a count.

EER is the point where the false positive rate equals the false negative rate (1 - TPR),
interpolated linearly between the two ROC points where their difference changes sign.

Protocol variants that raise numbers in the literature are options, off by default, and every
result says which were used (`protocol`): temporal Gaussian smoothing of each video's scores
(`smooth_sigma` frames) and per-video min-max normalisation (`minmax`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter1d
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from vad.errors import ParameterError


@dataclass(frozen=True)
class Protocol:
    smooth_sigma: float = 0.0  # frames; 0 = none
    minmax: bool = False

    def __post_init__(self) -> None:
        if self.smooth_sigma < 0:
            raise ParameterError(f"smoothing sigma must be >= 0 frames, got {self.smooth_sigma}")

    @property
    def label(self) -> str:
        """'standard', or the variants in use, for table headers."""
        parts = []
        if self.smooth_sigma:
            parts.append(f"temporal Gaussian smoothing (sigma {self.smooth_sigma:g} frames)")
        if self.minmax:
            parts.append("per-video min-max normalisation")
        return "standard" if not parts else "NON-STANDARD: " + " + ".join(parts)


def eer(labels: np.ndarray, scores: np.ndarray) -> float:
    """Equal error rate, interpolated on the ROC curve (NaN with one class)."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1.0 - tpr
    diff = fpr - fnr  # rises from -1 (fpr 0, fnr 1) to +1
    i = int(np.flatnonzero(diff >= 0)[0])
    if diff[i] == 0 or i == 0:
        return float(fpr[i])
    # linear interpolation between ROC points i - 1 and i, where fpr - fnr crosses zero
    t = -diff[i - 1] / (diff[i] - diff[i - 1])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def binary_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        return {"auc": float("nan"), "eer": float("nan"), "ap": float("nan")}
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "eer": eer(labels, scores),
        "ap": float(average_precision_score(labels, scores)),
    }


def apply_protocol(frames: pd.DataFrame, column: str, protocol: Protocol) -> np.ndarray:
    """The scores of `column` after the protocol's per-video transforms (frames in video order)."""
    out = frames[column].to_numpy(dtype=np.float64).copy()
    if protocol == Protocol():
        return out
    for _, idx in frames.groupby("video", observed=True, sort=False).indices.items():
        s = out[idx]
        if protocol.smooth_sigma:
            s = gaussian_filter1d(s, protocol.smooth_sigma, mode="nearest")
        if protocol.minmax:
            span = s.max() - s.min()
            s = (s - s.min()) / span if span > 0 else np.zeros_like(s)
        out[idx] = s
    return out


def evaluate(frames: pd.DataFrame, column: str = "score", protocol: Protocol = Protocol()) -> tuple[dict, pd.DataFrame]:
    """Micro and macro metrics of `column`, and the per-video table, over frames with known labels.

    `frames` needs columns video, frame, label (0/1, null when unknown) and the score column; frames
    with unknown labels are left out of every view (and counted in `unlabelled_frames`).
    """
    missing = {"video", "label", column} - set(frames.columns)
    if missing:
        raise ParameterError(f"frame table lacks column(s) {sorted(missing)}")
    frames = frames.sort_values(["video", "frame"] if "frame" in frames.columns else ["video"], kind="stable")
    scores = apply_protocol(frames, column, protocol)
    known = frames["label"].notna().to_numpy()
    labels = frames["label"].to_numpy(dtype="float64", na_value=np.nan)
    micro = binary_metrics(labels[known], scores[known])
    rows = []
    videos = frames["video"].to_numpy()
    for vid in pd.unique(videos):
        m = (videos == vid) & known
        lab = labels[m].astype(int)
        metrics = binary_metrics(lab, scores[m])
        rows.append({
            "video": vid, "frames": int(m.sum()), "anomalous_frames": int(lab.sum()),
            "defined": bool(len(np.unique(lab)) == 2), **metrics,
        })
    per_video = pd.DataFrame(rows)
    defined = per_video[per_video.defined]
    macro = {k: float(defined[k].mean()) if len(defined) else float("nan") for k in ("auc", "eer", "ap")}
    summary = {
        "protocol": protocol.label, "frames": int(known.sum()), "unlabelled_frames": int((~known).sum()),
        "anomalous_frames": int(np.nansum(labels[known])), "videos": len(per_video),
        "videos_defined": int(per_video.defined.sum()),
        **{f"micro_{k}": v for k, v in micro.items()}, **{f"macro_{k}": v for k, v in macro.items()},
    }
    return summary, per_video


def store_has_labels(store_url: str) -> bool:
    """Whether the store's test videos have labelled frames of both classes: what frame metrics, and the
    cost-quality sweep that ranks budgets by them, need."""
    from vad.storage import ClipStore

    seen: set[int] = set()
    for video in ClipStore.open(store_url).videos(split="test"):
        seen.update(int(v) for v in np.unique(video.labels) if v >= 0)
        if {0, 1} <= seen:
            return True
    return False

