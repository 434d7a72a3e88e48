"""Two-pass scoring: the small model scores every clip, the router picks clips, the large model
re-scores only those, and clip scores become frame scores.

Frame scores (`frame_mode`):
- `"clip"` (default): each frame gets the mean of the final calibrated scores of the clips that
  cover it;
- `"frame"`: each frame gets the mean, over the clips that cover it, of that clip's own per-frame
  error for the frame, calibrated by the model that scored the clip.
Frames after the last clip's end (when (N - T) is not a multiple of the stride) take the value of
the last clip that reaches furthest, so every frame has a score.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from storage import ClipStore, check_run_id, write_manifest, write_table
from tasks.calibration import cosine_distances
from tasks.checkpoint import Checkpoint, load_checkpoint
from tasks.errors import NotFoundError, ParameterError, PipelineError
from tasks.model_input import ClipDataset, clip_index, prepare_clips
from tasks.routing import BatchBudget, Budget, RouterConfig, Routing, budget_record, compute_signals, route
from tasks.training import autocast_for, available_cores, package_versions, pick_device
from tasks.workspace import check_dataset_name
from tasks.workspace import store_url as workspace_store_url

FrameMode = Literal["clip", "frame"]


@dataclass
class PassOutput:
    """One model's pass over a list of clips, arrays in the order of the clips given."""

    raw: np.ndarray  # (N,) raw clip scores
    calibrated: np.ndarray  # (N,) percentile ranks against the model's normal clips
    uncertainty: np.ndarray  # (N,)
    ood_distance: np.ndarray  # (N,) cosine distance to the normal centroid
    frame_errors: np.ndarray  # (N, T) raw per-frame scores
    seconds: float
    calls: int  # clips the model ran on

    @classmethod
    def empty(cls, clip_len: int) -> PassOutput:
        z = np.zeros(0)
        return cls(z, z, z, z, np.zeros((0, clip_len), np.float32), 0.0, 0)


def run_pass(
    checkpoint: Checkpoint, store_url: str, index: list[tuple[str, int]], *, device: str = "auto", batch: int = 16,
    workers: int | None = None, progress: bool = False, desc: str = "",
) -> PassOutput:
    """Score the clips `index` ((video, start) pairs) with the checkpoint's model, under inference mode.

    Clips are read as uint8 by a prefetching DataLoader (one spawned worker process when there are
    enough clips to pay for its start-up, a few seconds) and converted on the compute device.
    """
    spec = checkpoint.input
    if not index:
        return PassOutput.empty(spec.clip_len)
    dev = pick_device(device)
    torch.set_num_threads(available_cores())
    model = checkpoint.build_model(dev)
    if workers is None:
        workers = 1 if len(index) >= 400 else 0
    loader = DataLoader(
        ClipDataset(store_url, index, spec.clip_len), batch_size=batch, num_workers=workers,
        multiprocessing_context="spawn" if workers else None, prefetch_factor=4 if workers else None,
        pin_memory=dev.type == "cuda",
    )
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(index), desc=desc or checkpoint.arch, unit="clip", leave=False, dynamic_ncols=True)
    raw, unc, emb, frames = [], [], [], []
    t0 = time.perf_counter()
    with autocast_for(dev):
        for clips in loader:
            s = model.score(prepare_clips(clips, spec, model.value_range, device=dev))
            raw.append(s.clip.float().cpu().numpy())
            unc.append(s.uncertainty.float().cpu().numpy())
            emb.append(s.embedding.float().cpu().numpy())
            frames.append(s.frames.float().cpu().numpy())
            if bar is not None:
                bar.update(clips.shape[0])
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    cal = checkpoint.calibration
    raw_a = np.concatenate(raw).astype(np.float64)
    return PassOutput(
        raw=raw_a, calibrated=cal.calibrate(raw_a), uncertainty=np.concatenate(unc).astype(np.float64),
        ood_distance=cosine_distances(np.concatenate(emb), cal.centroid), frame_errors=np.concatenate(frames),
        seconds=seconds, calls=len(index),
    )


def aggregate_frames(n_frames: int, starts: np.ndarray, clip_len: int, values: np.ndarray) -> np.ndarray:
    """Per-frame mean over the clips covering each frame.

    `values` is (N,) (one value per clip, spread over its frames) or (N, T) (a value per clip frame).
    Frames no clip covers (after the last clip) take the last covered frame's value.
    """
    starts = np.asarray(starts, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    if len(starts) == 0:
        raise PipelineError("no clip covers this video; it is shorter than one clip")
    per_frame = values[:, None].repeat(clip_len, axis=1) if values.ndim == 1 else values
    total, count = np.zeros(n_frames), np.zeros(n_frames)
    rows = (starts[:, None] + np.arange(clip_len)[None, :]).ravel()
    keep = rows < n_frames
    np.add.at(total, rows[keep], per_frame.ravel()[keep])
    np.add.at(count, rows[keep], 1)
    covered = np.flatnonzero(count)
    out = np.empty(n_frames)
    out[covered] = total[covered] / count[covered]
    out[covered[-1] + 1 :] = out[covered[-1]]
    return out


@dataclass
class ScoreResult:
    clips: pd.DataFrame
    frames: pd.DataFrame
    small: PassOutput
    large: PassOutput
    routing: Routing
    seconds: dict[str, float] = field(default_factory=dict)
    videos: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return len(self.frames)


def _check_pair(small: Checkpoint, large: Checkpoint | None) -> None:
    if large is None:
        return
    a, b = small.input, large.input
    if (a.clip_len, a.stride) != (b.clip_len, b.stride):
        raise ParameterError(
            f"the small and large checkpoints cut clips differently ({a.clip_len} frames every {a.stride} vs "
            f"{b.clip_len} every {b.stride}); train them with the same --clip-len and --stride"
        )


def score_videos(
    store_url: str, small: Checkpoint, large: Checkpoint | None, budget: Budget, *, videos: list[str] | None = None,
    split: str | None = "test", router: RouterConfig = RouterConfig(), frame_mode: FrameMode = "clip",
    device: str = "auto", batch: int = 16, progress: bool = False,
) -> ScoreResult:
    """Score the store's videos (the test split by default) with both passes and the router."""
    if frame_mode not in ("clip", "frame"):
        raise ParameterError(f"frame mode must be 'clip' or 'frame', got {frame_mode!r}")
    _check_pair(small, large)
    t_start = time.perf_counter()
    store = ClipStore.open(store_url)
    ids = videos if videos is not None else store.video_ids(split=split)
    if not ids:
        raise PipelineError(f"store {store_url} has no complete videos to score (split: {split or 'any'})")
    vids = {v: store.video(v) for v in ids}
    for video in vids.values():
        small.check_video(video)
        if large is not None:
            large.check_video(video)
    t, s = small.input.clip_len, small.input.stride
    index = clip_index(store, ids, t, s)
    video_of = np.array([v for v, _ in index])
    starts = np.array([st for _, st in index], dtype=np.int64)
    clip_no = np.concatenate([np.arange((video_of == v).sum()) for v in ids])
    cuts = np.array([bool(vids[v].scene_cut[st + 1 : st + t].any()) for v, st in index])

    p1 = run_pass(small, store_url, index, device=device, batch=batch, progress=progress, desc=f"pass 1 ({small.arch})")
    t_route = time.perf_counter()
    signals = compute_signals(
        calibrated=p1.calibrated, embeddings_distance=p1.ood_distance, video_ids=video_of, scene_cut=cuts,
        calibration=small.calibration, config=router,
    )
    # without a large model nothing can be escalated
    routing = route(signals, video_of, budget if large is not None else BatchBudget(0.0))
    routing_seconds = time.perf_counter() - t_route
    chosen = np.flatnonzero(routing.escalated)
    p2 = (
        run_pass(large, store_url, [index[i] for i in chosen], device=device, batch=batch, progress=progress,
                 desc=f"pass 2 ({large.arch})")
        if large is not None and len(chosen) else PassOutput.empty(t)
    )
    large_score = np.full(len(index), np.nan)
    large_raw = np.full(len(index), np.nan)
    large_score[chosen], large_raw[chosen] = p2.calibrated, p2.raw
    final = np.where(routing.escalated, large_score, p1.calibrated)

    t_frames = time.perf_counter()
    clips = pd.DataFrame({
        "video": video_of, "clip": clip_no.astype(np.int32), "start_frame": starts.astype(np.int32),
        "end_frame": (starts + t).astype(np.int32),
        "small_raw": p1.raw, "small_score": p1.calibrated, "uncertainty": p1.uncertainty,
        "gray_distance": signals.gray_distance, "ood_distance": signals.ood_distance,
        "instability": signals.instability,
        **{f"signal_{k}": signals.flags.get(k, np.zeros(len(index), bool)) for k in ("gray_zone", "ood", "unstable", "scene_cut")},
        "difficulty": routing.difficulty, "escalated": routing.escalated, "budget_held": routing.held,
        "reasons": routing.reasons, "large_raw": large_raw, "large_score": large_score, "score": final,
    })
    # calibrated per-frame errors of the model that scored each clip (for frame_mode="frame")
    small_frames_cal = small.calibration.calibrate(p1.frame_errors)
    chosen_frames_cal = small_frames_cal.copy()
    if len(chosen):
        chosen_frames_cal[chosen] = large.calibration.calibrate(p2.frame_errors)  # type: ignore[union-attr]
    frame_tables = []
    for vid in ids:
        rows = np.flatnonzero(video_of == vid)
        n = vids[vid].n_frames
        if frame_mode == "clip":
            small_f = aggregate_frames(n, starts[rows], t, p1.calibrated[rows])
            final_f = aggregate_frames(n, starts[rows], t, final[rows])
        else:
            small_f = aggregate_frames(n, starts[rows], t, small_frames_cal[rows])
            final_f = aggregate_frames(n, starts[rows], t, chosen_frames_cal[rows])
        escalated_f = aggregate_frames(n, starts[rows], t, routing.escalated[rows].astype(float)) > 0
        labels = vids[vid].labels.astype("float64")
        labels[labels < 0] = np.nan
        frame_tables.append(pd.DataFrame({
            "video": vid, "frame": np.arange(n, dtype=np.int32), "label": pd.array(labels, dtype="Int8"),
            "small_score": small_f, "score": final_f, "escalated": escalated_f,
        }))
    frames = pd.concat(frame_tables, ignore_index=True)
    total = time.perf_counter() - t_start
    seconds = {
        "pass1": p1.seconds, "routing": routing_seconds, "pass2": p2.seconds,
        "frames": time.perf_counter() - t_frames, "total": total,
    }
    return ScoreResult(clips, frames, p1, p2, routing, seconds, list(ids))


def run_manifest(result: ScoreResult, small: Checkpoint, large: Checkpoint | None, budget: Budget,
                 router: RouterConfig, frame_mode: str) -> dict:
    """What run.json records beside the tables (the caller adds ids, paths and versions)."""
    n_clips = len(result.clips)
    return {
        "small": {"path": small.path, "arch": small.arch, "fingerprint": small.fingerprint, "dataset": small.dataset},
        "large": None if large is None else {"path": large.path, "arch": large.arch, "fingerprint": large.fingerprint, "dataset": large.dataset},
        "budget": budget_record(budget), "router": {"margin": router.margin, "ood_quantile": router.ood_quantile,
        "instability_quantile": router.instability_quantile, "signals": list(router.signals)},
        "frame_mode": frame_mode, "clip_len": small.input.clip_len, "stride": small.input.stride,
        "videos": result.videos, "clips": n_clips, "frames": result.n_frames,
        "escalated": int(result.routing.escalated.sum()), "escalation_rate": float(result.routing.escalated.mean()) if n_clips else 0.0,
        "small_calls": result.small.calls, "large_calls": result.large.calls, "seconds": result.seconds,
        "seconds_per_1000_frames": {k: 1000 * v / max(result.n_frames, 1) for k, v in result.seconds.items()},
    }


def find_checkpoint(root: str, dataset: str, role: str) -> str:
    """The one `<role>-*.pt` in `<root>/checkpoints/<dataset>/` (none or several is an error)."""
    folder = Path(root) / "checkpoints" / check_dataset_name(dataset)
    found = sorted(folder.glob(f"{role}-*.pt"))
    if not found:
        raise NotFoundError(f"no {role} checkpoint in {folder}; train one with `vad train --dataset {dataset} --model {role}` or pass --{role} PATH")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ParameterError(f"several {role} checkpoints in {folder} ({names}); choose one with --{role} PATH")
    return str(found[0])


@dataclass
class ScoreSummary:
    dataset: str
    run_id: str
    clips: int
    frames: int
    escalated: int
    large_calls: int
    seconds: dict[str, float]
    paths: dict[str, str]

    @property
    def escalation_rate(self) -> float:
        return self.escalated / max(self.clips, 1)

    def text(self) -> str:
        per_k = 1000 * self.seconds["total"] / max(self.frames, 1)
        lines = [
            f"score {self.dataset} (run {self.run_id}): {self.clips:,} clips, {self.frames:,} frames; escalated "
            f"{self.escalated:,} ({self.escalation_rate:.1%}); large-model calls {self.large_calls:,}",
            f"time: {self.seconds['total']:.1f} s ({per_k:.2f} s per 1,000 frames; pass 1 {self.seconds['pass1']:.1f} s, "
            f"pass 2 {self.seconds['pass2']:.1f} s)",
        ]
        lines += [f"{name}: {path}" for name, path in self.paths.items()]
        return "\n".join(lines)


def score_dataset(
    root: str, dataset: str, *, small_path: str | None = None, large_path: str | None = None, budget: Budget,
    run_id: str, router: RouterConfig = RouterConfig(), frame_mode: FrameMode = "clip", split: str | None = "test",
    device: str = "auto", batch: int = 16, progress: bool = False,
) -> ScoreSummary:
    """Score a dataset's store with both passes and write the run's clip and frame tables and run.json."""
    check_run_id(run_id)
    small = load_checkpoint(small_path or find_checkpoint(root, dataset, "small"))
    large_file = large_path or find_checkpoint(root, dataset, "large")
    large = load_checkpoint(large_file)
    url = workspace_store_url(root, dataset)
    result = score_videos(url, small, large, budget, split=split, router=router, frame_mode=frame_mode,
                          device=device, batch=batch, progress=progress)
    clips_path = write_table(root, "clips", dataset, run_id, result.clips)
    frames_path = write_table(root, "frames", dataset, run_id, result.frames)
    manifest = {
        "run": run_id, "dataset": dataset, "store": url, "created_at": datetime.now(timezone.utc).isoformat(),
        **run_manifest(result, small, large, budget, router, frame_mode), "versions": package_versions(),
        "tables": {"clips": str(clips_path), "frames": str(frames_path)},
    }
    run_path = write_manifest(root, dataset, run_id, manifest)
    return ScoreSummary(
        dataset=dataset, run_id=run_id, clips=len(result.clips), frames=result.n_frames,
        escalated=int(result.routing.escalated.sum()), large_calls=result.large.calls, seconds=result.seconds,
        paths={"clips": str(clips_path), "frames": str(frames_path), "run": str(run_path)},
    )
