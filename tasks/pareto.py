"""The cost-quality sweep: every budget simulated offline from one run that scored every clip with
both models (a `--budget 1` run), so the sweep costs one large-model pass, not one per budget.

For each setting the router is applied to the stored small-model signals exactly as `vad score`
would, the final clip score is the stored large-model score where escalated and the small-model
score elsewhere, and frames get the mean of their covering clips (the default `clip` frame mode).
The production score flow still runs the large model on escalated clips only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from tasks.errors import ParameterError
from tasks.metrics import Protocol, evaluate
from tasks.routing import BatchBudget, Budget, Signals, TokenBucket, route
from tasks.scoring import aggregate_frames

SIGNAL_COLUMNS = ("gray_zone", "ood", "unstable", "scene_cut")
DEFAULT_BUDGETS = tuple(round(b, 2) for b in np.arange(0, 1.0001, 0.02))


def _signals(clips: pd.DataFrame) -> Signals:
    flags = {k: clips[f"signal_{k}"].to_numpy(bool) for k in SIGNAL_COLUMNS if f"signal_{k}" in clips}
    return Signals(
        gray_distance=clips["gray_distance"].to_numpy(float), ood_distance=clips["ood_distance"].to_numpy(float),
        instability=clips["instability"].to_numpy(float), flags=flags,
    )


def pareto_front(cost: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """True where no other point costs no more and scores at least as well, one of them strictly."""
    cost, quality = np.asarray(cost, float), np.asarray(quality, float)
    front = np.ones(len(cost), bool)
    for i in range(len(cost)):
        dominated = (cost <= cost[i]) & (quality >= quality[i]) & ((cost < cost[i]) | (quality > quality[i]))
        front[i] = not dominated.any()
    return front


def sweep(
    clips: pd.DataFrame, frames: pd.DataFrame, *, clip_len: int, budgets: Sequence[float] = DEFAULT_BUDGETS,
    buckets: Sequence[tuple[float, float]] = (), protocol: Protocol = Protocol(),
) -> pd.DataFrame:
    """Micro AUC/EER/AP against escalation for each budget and bucket, plus both single-model baselines.

    `clips` and `frames` are one run's tables; every clip must carry a large-model score.
    """
    if clips["large_score"].isna().any():
        raise ParameterError(
            "the sweep needs a run whose clips all have a large-model score; score once with --budget 1"
        )
    clips = clips.sort_values(["video", "clip"], kind="stable").reset_index(drop=True)
    frames = frames.sort_values(["video", "frame"], kind="stable").reset_index(drop=True)
    videos = clips["video"].to_numpy()
    signals = _signals(clips)
    small, large = clips["small_score"].to_numpy(float), clips["large_score"].to_numpy(float)
    starts = clips["start_frame"].to_numpy(np.int64)
    frame_rows = frames.groupby("video", observed=True, sort=False).indices
    n_frames = {v: len(idx) for v, idx in frame_rows.items()}

    def frame_scores(final: np.ndarray) -> np.ndarray:
        out = np.empty(len(frames))
        for vid, idx in frame_rows.items():
            rows = np.flatnonzero(videos == vid)
            out[idx] = aggregate_frames(n_frames[vid], starts[rows], clip_len, final[rows])
        return out

    settings: list[tuple[str, str, Budget | None]] = [("small only", "-", None), ("large only", "-", None)]
    settings += [("batch", f"{b:g}", BatchBudget(float(b))) for b in budgets]
    settings += [("token bucket", f"{c:g},{r:g}", TokenBucket(float(c), float(r))) for c, r in buckets]
    rows = []
    for policy, setting, budget in settings:
        if budget is None:
            escalated = np.zeros(len(clips), bool) if policy == "small only" else np.ones(len(clips), bool)
        else:
            escalated = route(signals, videos, budget).escalated
        final = np.where(escalated, large, small)
        table = frames.assign(score=frame_scores(final))
        summary, _ = evaluate(table, "score", protocol)
        rows.append({
            "policy": policy, "setting": setting, "escalation_rate": float(escalated.mean()),
            "large_calls": int(escalated.sum()), "micro_auc": summary["micro_auc"],
            "micro_eer": summary["micro_eer"], "micro_ap": summary["micro_ap"], "macro_auc": summary["macro_auc"],
            "protocol": summary["protocol"],
        })
    out = pd.DataFrame(rows)
    out["pareto"] = pareto_front(out["escalation_rate"], out["micro_auc"])
    return out
