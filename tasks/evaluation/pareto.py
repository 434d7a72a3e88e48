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
from vad.tasks.evaluation.metrics import Protocol, evaluate
from vad.tasks.inference.routing import BatchBudget, Budget, Signals, TokenBucket, route
from vad.tasks.inference.scoring import aggregate_frames

from vad.errors import ParameterError

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


class Simulation:
    """One budget-1 run's tables, ready to replay the router under any budget.

    `frames_for(escalated)` gives the frame table with the score a run escalating exactly those
    clips would have written (large-model score where escalated, small-model score elsewhere,
    frames the mean of their covering clips).
    """

    def __init__(self, clips: pd.DataFrame, frames: pd.DataFrame, *, clip_len: int) -> None:
        if clips["large_score"].isna().any():
            raise ParameterError(
                "the sweep needs a run whose clips all have a large-model score; score once with --budget 1"
            )
        self.clips = clips.sort_values(["video", "clip"], kind="stable").reset_index(drop=True)
        self.frames = frames.sort_values(["video", "frame"], kind="stable").reset_index(drop=True)
        self.clip_len = clip_len
        self.videos = self.clips["video"].to_numpy()
        self.signals = _signals(self.clips)
        self.small = self.clips["small_score"].to_numpy(float)
        self.large = self.clips["large_score"].to_numpy(float)
        self._starts = self.clips["start_frame"].to_numpy(np.int64)
        self._frame_rows = self.frames.groupby("video", observed=True, sort=False).indices

    def escalated(self, budget: Budget | None, *, everything: bool = False, signals: Sequence[str] | None = None) -> np.ndarray:
        """The clips the router escalates under `budget` (None: none, or all with `everything`),
        with only the named `signals` allowed to fire (None: those of the run)."""
        if budget is None:
            return np.full(len(self.clips), everything)
        sig = self.signals
        if signals is not None:
            unknown = sorted(set(signals) - set(sig.flags))
            if unknown:
                raise ParameterError(f"the run has no signal(s) {unknown}; it has {', '.join(sig.flags)}")
            sig = Signals(sig.gray_distance, sig.ood_distance, sig.instability, {k: sig.flags[k] for k in signals})
        return route(sig, self.videos, budget).escalated

    def frames_for(self, escalated: np.ndarray) -> pd.DataFrame:
        return self.frames_from(np.where(escalated, self.large, self.small))

    def frames_from(self, final: np.ndarray) -> pd.DataFrame:
        """The frame table scored by one value per clip (clips in video, clip order)."""
        out = np.empty(len(self.frames))
        for vid, idx in self._frame_rows.items():
            rows = np.flatnonzero(self.videos == vid)
            out[idx] = aggregate_frames(len(idx), self._starts[rows], self.clip_len, final[rows])
        return self.frames.assign(score=out)


def sweep(
    clips: pd.DataFrame, frames: pd.DataFrame, *, clip_len: int, budgets: Sequence[float] = DEFAULT_BUDGETS,
    buckets: Sequence[tuple[float, float]] = (), protocol: Protocol = Protocol(),
) -> pd.DataFrame:
    """Micro AUC/EER/AP against escalation for each budget and bucket, plus both single-model baselines.

    `clips` and `frames` are one run's tables; every clip must carry a large-model score.
    """
    sim = Simulation(clips, frames, clip_len=clip_len)
    settings: list[tuple[str, str, Budget | None]] = [("small only", "-", None), ("large only", "-", None)]
    settings += [("batch", f"{b:g}", BatchBudget(float(b))) for b in budgets]
    settings += [("token bucket", f"{c:g},{r:g}", TokenBucket(float(c), float(r))) for c, r in buckets]
    rows = []
    for policy, setting, budget in settings:
        escalated = sim.escalated(budget, everything=policy == "large only")
        summary, _ = evaluate(sim.frames_for(escalated), "score", protocol)
        rows.append({
            "policy": policy, "setting": setting, "escalation_rate": float(escalated.mean()),
            "large_calls": int(escalated.sum()), "micro_auc": summary["micro_auc"],
            "micro_eer": summary["micro_eer"], "micro_ap": summary["micro_ap"], "macro_auc": summary["macro_auc"],
            "protocol": summary["protocol"],
        })
    out = pd.DataFrame(rows)
    out["pareto"] = pareto_front(out["escalation_rate"], out["micro_auc"])
    return out
