"""The cost-quality sweep: every budget simulated offline from one run that scored every clip with
both models (a `--budget 1` run), so the sweep costs one large-model pass, not one per budget.

For each setting the router (`routing.route`) is applied to the stored small-model signals exactly as
`vad score` applies it, the final clip score is `routing.fuse(fusion, small, large)` of the stored
scores where escalated (the large score for "replace") and the small-model score elsewhere, and frames are made by the function a real run makes them with
(`scoring.video_frame_scores`), in the run's frame mode: the replay of a routed run gives the tables
that run writes (tests/test_replay.py). The frame mode "frame" replays from the per-frame scores a
run in that mode keeps in its clip table. The production score flow still runs the large model on
escalated clips only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from vad.tasks.evaluation.metrics import Protocol, evaluate
from vad.tasks.inference.routing import BatchBudget, Budget, Signals, TokenBucket, check_fusion, fuse, route
from vad.tasks.inference.scoring import FrameMode, aggregate_frames, check_frame_mode, video_frame_scores

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

    `frames_for(escalated)` gives the frame table a run escalating exactly those clips would have
    written (`fuse(fusion, small, large)` where escalated, small-model score elsewhere, frames as
    `frame_mode` makes them).
    """

    def __init__(self, clips: pd.DataFrame, frames: pd.DataFrame, *, clip_len: int, frame_mode: FrameMode = "clip",
                 fusion: str = "replace") -> None:
        self.fusion = check_fusion(fusion)
        if clips["large_score"].isna().any():
            raise ParameterError(
                "the sweep needs a run whose clips all have a large-model score; score once with --budget 1"
            )
        self.frame_mode = check_frame_mode(frame_mode)
        if frame_mode == "frame" and not {"small_frame_scores", "large_frame_scores"} <= set(clips.columns):
            raise ParameterError("the sweep in frame mode 'frame' needs a run scored in that mode by this version "
                                 "(its clips keep their per-frame scores); score again with --budget 1 --frame-mode frame")
        self.clips = clips.sort_values(["video", "clip"], kind="stable").reset_index(drop=True)
        self.frames = frames.sort_values(["video", "frame"], kind="stable").reset_index(drop=True)
        self.clip_len = clip_len
        self.videos = self.clips["video"].to_numpy()
        self.signals = _signals(self.clips)
        self.small = self.clips["small_score"].to_numpy(float)
        self.large = self.clips["large_score"].to_numpy(float)
        self._starts = self.clips["start_frame"].to_numpy(np.int64)
        self._frame_rows = self.frames.groupby("video", observed=True, sort=False).indices
        self._clip_rows = {vid: np.flatnonzero(self.videos == vid) for vid in self._frame_rows}
        self._per_frame = None
        if frame_mode == "frame":
            self._per_frame = tuple(np.stack(self.clips[c].to_numpy()) for c in ("small_frame_scores", "large_frame_scores"))

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

    def frames_for(self, escalated: np.ndarray, *, fusion: str | None = None) -> pd.DataFrame:
        """The frame table of a run that escalated exactly these clips (score, small_score, escalated),
        with `fusion` (None: the simulation's) on the escalated ones."""
        escalated = np.asarray(escalated, bool)
        rule = check_fusion(fusion or self.fusion)
        final = np.where(escalated, fuse(rule, self.small, self.large), self.small)
        columns = {k: np.empty(len(self.frames), dtype=bool if k == "escalated" else float) for k in ("small_score", "score", "escalated")}
        for vid, idx in self._frame_rows.items():
            rows = self._clip_rows[vid]
            per_frame: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
            if self._per_frame is not None:
                small_f, large_f = (a[rows] for a in self._per_frame)
                per_frame = (small_f, np.where(escalated[rows, None], fuse(rule, small_f, large_f), small_f))
            made = video_frame_scores(len(idx), self._starts[rows], self.clip_len, escalated[rows], self.small[rows],
                                      final[rows], *per_frame)
            for k, v in made.items():
                columns[k][idx] = v
        return self.frames.assign(**columns)

    def frames_from(self, final: np.ndarray) -> pd.DataFrame:
        """The frame table scored by one value per clip (clips in video, clip order; frame mode "clip")."""
        out = np.empty(len(self.frames))
        for vid, idx in self._frame_rows.items():
            rows = self._clip_rows[vid]
            out[idx] = aggregate_frames(len(idx), self._starts[rows], self.clip_len, final[rows])
        return self.frames.assign(score=out)


def sweep(
    clips: pd.DataFrame, frames: pd.DataFrame, *, clip_len: int, budgets: Sequence[float] = DEFAULT_BUDGETS,
    buckets: Sequence[tuple[float, float]] = (), protocol: Protocol = Protocol(), frame_mode: FrameMode = "clip",
    fusion: str = "replace",
) -> pd.DataFrame:
    """Micro AUC/EER/AP against escalation for each budget and bucket, plus both single-model baselines.

    `clips` and `frames` are one run's tables; every clip must carry a large-model score;
    `frame_mode` and `fusion` are the run's (its run.json's `frame_mode` and `fusion`). "large only"
    is the large model's own score on every clip, whatever the fusion.
    """
    sim = Simulation(clips, frames, clip_len=clip_len, frame_mode=frame_mode, fusion=fusion)
    settings: list[tuple[str, str, Budget | None]] = [("small only", "-", None), ("large only", "-", None)]
    settings += [("batch", f"{b:g}", BatchBudget(float(b))) for b in budgets]
    settings += [("token bucket", f"{c:g},{r:g}", TokenBucket(float(c), float(r))) for c, r in buckets]
    rows = []
    for policy, setting, budget in settings:
        escalated = sim.escalated(budget, everything=policy == "large only")
        summary, _ = evaluate(sim.frames_for(escalated, fusion="replace" if policy == "large only" else None), "score", protocol)
        rows.append({
            "policy": policy, "setting": setting, "escalation_rate": float(escalated.mean()),
            "large_calls": int(escalated.sum()), "micro_auc": summary["micro_auc"],
            "micro_eer": summary["micro_eer"], "micro_ap": summary["micro_ap"], "macro_auc": summary["macro_auc"],
            "protocol": summary["protocol"],
        })
    out = pd.DataFrame(rows)
    out["pareto"] = pareto_front(out["escalation_rate"], out["micro_auc"])
    return out
