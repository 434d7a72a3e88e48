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

import contextlib
import multiprocessing
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from storage import ClipStore, check_run_id, write_manifest, write_table
from tasks.calibration import cosine_distances
from tasks.checkpoint import Checkpoint, cached_checkpoint
from tasks.errors import NotFoundError, ParameterError, PipelineError
from tasks.memory import release_freed_memory
from tasks.model_input import ClipBatches, clip_index, prepare_clips
from tasks.routing import BatchBudget, Budget, RouterConfig, Routing, Signals, budget_record, compute_signals, route
from tasks.training import autocast_for, available_cores, package_versions, pick_device
from tasks.workspace import check_dataset_name
from tasks.workspace import store_url as workspace_store_url

FrameMode = Literal["clip", "frame"]
Precision = Literal["auto", "float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


@dataclass(frozen=True)
class Compute:
    """Where and how the scoring passes run; recorded in run.json.

    `batch` None: measured per device (`choose_batch`); `precision` "auto": bfloat16 autocast on
    CUDA, float32 elsewhere (`scoring_precision`); `compile`: `torch.compile` the scoring model
    (a one-off compile of 3-20 s per model, device and batch shape; docs/operations.md says when it pays).
    """

    device: str = "auto"
    batch: int | None = None
    precision: Precision = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ParameterError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.batch is not None and self.batch < 1:
            raise ParameterError(f"batch must be 1 or more, got {self.batch}")


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
    device: str = ""  # where it ran ("" when no clip was scored)
    batch: int = 0  # clips per model call (0 when no clip was scored)

    @classmethod
    def empty(cls, clip_len: int) -> PassOutput:
        z = np.zeros(0)
        return cls(z, z, z, z, np.zeros((0, clip_len), np.float32), 0.0, 0)

    @classmethod
    def concat(cls, parts: list[PassOutput], clip_len: int) -> PassOutput:
        """The passes of several videos as one, in the order given."""
        if not parts:
            return cls.empty(clip_len)
        ran = [p for p in parts if p.calls]
        return cls(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("raw", "calibrated", "uncertainty", "ood_distance", "frame_errors")),
            seconds=sum(p.seconds for p in parts), calls=sum(p.calls for p in parts),
            device=ran[0].device if ran else "", batch=max((p.batch for p in ran), default=0),
        )


def scoring_precision(device: torch.device, precision: Precision = "auto") -> Any:
    """The autocast context of a scoring pass: `"auto"` is bfloat16 on CUDA and float32 elsewhere
    (`autocast_for`); `"float32"` and `"bfloat16"` force one. bfloat16 on a CPU without native
    support is slower than float32; it is there to check on any machine what a GPU's scores will be."""
    if precision == "auto":
        return autocast_for(device)
    if precision == "float32":
        return torch.autocast(device.type, enabled=False)
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ParameterError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


# batch sizes tried on CUDA, in order; measurement stops at the first that runs out of memory or
# is not at least 5% faster per clip than the best so far
BATCH_CANDIDATES = (16, 32, 64, 128, 256)
# benchmarks/throughput.py --batches 4,8,16 on 2 cores (README): vae3d-motion 51.6, 55.2, 40.2 clips/s,
# predictor-wide 12.2, 10.4, 8.7 (another run 12.6, 9.0, 7.1); larger batches also hold more memory
CPU_BATCH = 8
_COMPILED_PASS = threading.Lock()
_DEVICE_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_LOCK = threading.Lock()


def measure_batch(
    checkpoint: Checkpoint, device: torch.device, *, precision: Precision = "auto",
    candidates: tuple[int, ...] = BATCH_CANDIDATES, repeats: int = 3,
) -> tuple[int, dict[int, float]]:
    """The batch size that scores the most clips per second on `device`, and clips/s of each tried.

    Each candidate scores random clips of the checkpoint's stored frame size (copy to the device,
    conversion, model) once to warm up and then `repeats` times, timed to the device's completion.
    """
    model = checkpoint.scoring_model(device)
    spec = checkpoint.input
    h, w, c = (int(v) for v in checkpoint.source["frame_size"])
    gen = torch.Generator().manual_seed(0)
    rates: dict[int, float] = {}
    best = 0.0
    for b in candidates:
        clips = torch.randint(0, 256, (b, spec.clip_len, h, w, c), dtype=torch.uint8, generator=gen)
        if device.type == "cuda":
            clips = clips.pin_memory()
        try:
            with torch.inference_mode(), scoring_precision(device, precision):
                model.score(prepare_clips(clips, spec, model.value_range, device=device))
                _synchronize(device)
                t0 = time.perf_counter()
                for _ in range(repeats):
                    model.score(prepare_clips(clips, spec, model.value_range, device=device))
                _synchronize(device)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        rates[b] = b * repeats / (time.perf_counter() - t0)
        if rates[b] < best * 1.05:
            break
        best = max(best, rates[b])
    if not rates:
        raise PipelineError(
            f"{checkpoint.path or checkpoint.arch}: not even {candidates[0]} clips fit in {device}'s memory; give a smaller --batch"
        )
    return max(rates, key=rates.__getitem__), rates


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def choose_batch(checkpoint: Checkpoint, device: torch.device, *, precision: Precision = "auto") -> int:
    """Clips per batch when none is given: `CPU_BATCH` on a CPU; on CUDA the fastest of
    `BATCH_CANDIDATES` (`measure_batch`), measured once per checkpoint, device and precision."""
    if device.type != "cuda":
        return CPU_BATCH
    # measured on the model uncompiled: compiling once per candidate size would take minutes;
    # under the device's lock, so that no pass runs on the GPU meanwhile
    key = ("batch", str(device), precision)
    with _device_lock(device):
        if key not in checkpoint.cache:
            checkpoint.cache[key] = measure_batch(checkpoint, device, precision=precision)[0]
    return checkpoint.cache[key]


def _device_lock(device: torch.device) -> threading.RLock:
    """One lock per CUDA device: passes on one GPU take turns (see `run_pass`)."""
    with _LOCKS_LOCK:
        return _DEVICE_LOCKS.setdefault(str(device), threading.RLock())


def _pass_lock(device: torch.device, compile: bool) -> Any:
    """What a pass holds while it scores: compiled passes take turns (torch.compile is not safe
    from two threads at once), and so do passes on one GPU (each sized its batch for the GPU alone);
    CPU passes on threads share the cores freely."""
    if compile:
        return _COMPILED_PASS
    return _device_lock(device) if device.type == "cuda" else contextlib.nullcontext()


def run_pass(
    checkpoint: Checkpoint, store_url: str, index: list[tuple[str, int]], *, compute: Compute = Compute(),
    workers: int | None = None,
) -> PassOutput:
    """Score the clips `index` ((video, start) pairs) with the checkpoint's model, under inference mode.

    Clips are read as uint8 in batches of one video, each run of overlapping clips as one span of
    frames (`ClipBatches`), by a DataLoader: in this process on a CPU; on CUDA by one spawned reader
    process reading about 64 clips ahead into pinned memory, copied without blocking, when there
    are enough clips to pay for its start-up (a few seconds). They are converted on the compute
    device. The model is the checkpoint's scoring model (`Checkpoint.scoring_model`), built once per
    device; with `compile` a short last batch is padded to the next power of two, so few shapes are
    compiled. Passes on one GPU, and compiled passes anywhere, take turns (`_pass_lock`).
    """
    spec = checkpoint.input
    if not index:
        return PassOutput.empty(spec.clip_len)
    dev = pick_device(compute.device)
    precision, compile = compute.precision, compute.compile
    torch.set_num_threads(available_cores())
    model = checkpoint.scoring_model(dev, compile=compile)
    batch = compute.batch or choose_batch(checkpoint, dev, precision=precision)
    if workers is None:
        # On a CPU, reading in the scoring process costs as much as a reader process and holds
        # ~370 MB less (a 10-minute 720p pass: 49.1 s without, 48.4 s with); on CUDA a reader
        # process keeps the next batch coming while the GPU works. A daemon process (a Dask
        # worker) may not start children.
        spawn_ok = len(index) >= 400 and not multiprocessing.current_process().daemon
        workers = 1 if dev.type == "cuda" and spawn_ok else 0
    loader = DataLoader(
        ClipBatches(store_url, index, spec.clip_len, batch), batch_size=None, num_workers=workers,
        # about 64 clips read ahead, whatever the batch size
        multiprocessing_context="spawn" if workers else None, prefetch_factor=max(1, min(4, 64 // batch)) if workers else None,
        pin_memory=dev.type == "cuda",
    )
    # Results go straight into arrays sized for the whole pass: no per-batch objects accumulate
    # between the batches' large temporaries, which would keep the allocator from returning memory.
    n = len(index)
    raw, unc = np.empty(n), np.empty(n)
    frames = np.empty((n, spec.clip_len), np.float32)
    emb: np.ndarray | None = None
    done = 0
    t0 = time.perf_counter()
    with _pass_lock(dev, compile), torch.inference_mode(), scoring_precision(dev, precision):
        for clips in loader:
            m = len(clips)
            if compile and m < batch:
                # a short batch is padded to the next power of two (at most `batch`): a pass
                # compiles at most log2(batch) + 1 shapes and wastes at most half a batch
                clips = torch.cat([clips, clips[-1:].expand(min(batch, 1 << (m - 1).bit_length()) - m, *clips.shape[1:])])
            s = model.score(prepare_clips(clips, spec, model.value_range, device=dev))
            k = slice(done, done + m)
            if emb is None:
                emb = np.empty((n, s.embedding.shape[1]), np.float32)
            raw[k], unc[k] = s.clip[:m].float().cpu().numpy(), s.uncertainty[:m].float().cpu().numpy()
            emb[k], frames[k] = s.embedding[:m].float().cpu().numpy(), s.frames[:m].float().cpu().numpy()
            done += m
            release_freed_memory(every=16)
    seconds = time.perf_counter() - t0
    cal = checkpoint.calibration
    return PassOutput(
        raw=raw, calibrated=cal.calibrate(raw), uncertainty=unc, ood_distance=cosine_distances(emb, cal.centroid),
        frame_errors=frames, seconds=seconds, calls=n, device=str(dev), batch=batch,
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
class VideoPass:
    """Pass 1 over one video: its clips (start frames, scene cuts), frame count, labels, and the
    small model's output. The unit of work the score flow maps over videos."""

    video: str
    n_frames: int
    labels: np.ndarray  # (n_frames,) int8, -1 unknown
    starts: np.ndarray  # (N,) clip start frames
    cuts: np.ndarray  # (N,) bool: a scene cut inside the clip
    out: PassOutput


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


def check_pair(small: Checkpoint, large: Checkpoint | None) -> None:
    """Both models must cut a video into the same clips, since the large one re-scores the small one's clips."""
    if large is None:
        return
    a, b = small.input, large.input
    if (a.clip_len, a.stride) != (b.clip_len, b.stride):
        raise ParameterError(
            f"the small and large checkpoints cut clips differently ({a.clip_len} frames every {a.stride} vs "
            f"{b.clip_len} every {b.stride}); train them with the same --clip-len and --stride"
        )


def first_pass(
    store_url: str, small: Checkpoint, video_id: str, *, large: Checkpoint | None = None, compute: Compute = Compute(),
) -> VideoPass:
    """Check that the video fits both checkpoints, then score each of its clips with the small model."""
    store = ClipStore.open(store_url)
    video = store.video(video_id)
    small.check_video(video)
    if large is not None:
        large.check_video(video)
    t, s = small.input.clip_len, small.input.stride
    index = clip_index(store, [video_id], t, s)
    starts = np.array([st for _, st in index], dtype=np.int64)
    scene_cut = video.scene_cut
    cuts = np.array([bool(scene_cut[st + 1 : st + t].any()) for st in starts], dtype=bool)
    out = run_pass(small, store_url, index, compute=compute)
    return VideoPass(video_id, video.n_frames, video.labels, starts, cuts, out)


@dataclass
class RoutePlan:
    """The router's decision over all clips of the given videos, in stream order."""

    signals: Signals
    routing: Routing
    video_of: np.ndarray  # (N,) video id of each clip
    seconds: float

    def escalated_starts(self, passes: list[VideoPass]) -> dict[str, np.ndarray]:
        """Start frames of the escalated clips, per video that has any."""
        out = {}
        for p in passes:
            chosen = self.routing.escalated[self.video_of == p.video]
            if chosen.any():
                out[p.video] = p.starts[chosen]
        return out


def plan_routes(
    passes: list[VideoPass], small: Checkpoint, budget: Budget, *, router: RouterConfig = RouterConfig(),
    has_large: bool = True,
) -> RoutePlan:
    """Signals over every clip of `passes`, then the budget (a batch budget ranks clips of all the
    videos given together). Without a large model nothing is escalated."""
    t0 = time.perf_counter()
    video_of = np.concatenate([np.full(len(p.starts), p.video, dtype=object) for p in passes])
    first = PassOutput.concat([p.out for p in passes], small.input.clip_len)
    signals = compute_signals(
        calibrated=first.calibrated, embeddings_distance=first.ood_distance, video_ids=video_of,
        scene_cut=np.concatenate([p.cuts for p in passes]), calibration=small.calibration, config=router,
    )
    routing = route(signals, video_of, budget if has_large else BatchBudget(0.0))
    return RoutePlan(signals, routing, video_of, time.perf_counter() - t0)


def second_pass(
    store_url: str, large: Checkpoint, video_id: str, starts: np.ndarray, *, compute: Compute = Compute(),
) -> PassOutput:
    """Re-score the clips of one video that start at `starts` with the large model."""
    index = [(video_id, int(st)) for st in starts]
    return run_pass(large, store_url, index, compute=compute)


def assemble(
    passes: list[VideoPass], plan: RoutePlan, second: dict[str, PassOutput], small: Checkpoint,
    large: Checkpoint | None, *, frame_mode: FrameMode = "clip",
) -> ScoreResult:
    """Clip and frame tables from the passes and the routing (see the module docstring for frame modes)."""
    t = small.input.clip_len
    t0 = time.perf_counter()
    p1 = PassOutput.concat([p.out for p in passes], t)
    p2 = PassOutput.concat([second[p.video] for p in passes if p.video in second], t)
    video_of, routing, signals = plan.video_of, plan.routing, plan.signals
    starts = np.concatenate([p.starts for p in passes])
    clip_no = np.concatenate([np.arange(len(p.starts)) for p in passes])
    chosen = np.flatnonzero(routing.escalated)  # stream order, the order of p2's rows
    if len(chosen) != p2.calls:
        raise PipelineError(f"the large model re-scored {p2.calls} clips but {len(chosen)} were escalated")
    large_score = np.full(len(starts), np.nan)
    large_raw = np.full(len(starts), np.nan)
    large_score[chosen], large_raw[chosen] = p2.calibrated, p2.raw
    final = np.where(routing.escalated, large_score, p1.calibrated)
    clips = pd.DataFrame({
        "video": video_of.astype(str), "clip": clip_no.astype(np.int32), "start_frame": starts.astype(np.int32),
        "end_frame": (starts + t).astype(np.int32),
        "small_raw": p1.raw, "small_score": p1.calibrated, "uncertainty": p1.uncertainty,
        "gray_distance": signals.gray_distance, "ood_distance": signals.ood_distance,
        "instability": signals.instability,
        **{f"signal_{k}": signals.flags.get(k, np.zeros(len(starts), bool)) for k in ("gray_zone", "ood", "unstable", "scene_cut")},
        "difficulty": routing.difficulty, "escalated": routing.escalated, "budget_held": routing.held,
        "reasons": routing.reasons, "large_raw": large_raw, "large_score": large_score, "score": final,
    })
    # calibrated per-frame errors of the model that scored each clip (for frame_mode="frame")
    small_frames_cal = small.calibration.calibrate(p1.frame_errors)
    chosen_frames_cal = small_frames_cal.copy()
    if len(chosen):
        chosen_frames_cal[chosen] = large.calibration.calibrate(p2.frame_errors)  # type: ignore[union-attr]
    frame_tables = []
    for p in passes:
        rows = np.flatnonzero(video_of == p.video)
        n = p.n_frames
        if frame_mode == "clip":
            small_f = aggregate_frames(n, starts[rows], t, p1.calibrated[rows])
            final_f = aggregate_frames(n, starts[rows], t, final[rows])
        else:
            small_f = aggregate_frames(n, starts[rows], t, small_frames_cal[rows])
            final_f = aggregate_frames(n, starts[rows], t, chosen_frames_cal[rows])
        escalated_f = aggregate_frames(n, starts[rows], t, routing.escalated[rows].astype(float)) > 0
        labels = p.labels.astype("float64")
        labels[labels < 0] = np.nan
        frame_tables.append(pd.DataFrame({
            "video": p.video, "frame": np.arange(n, dtype=np.int32), "label": pd.array(labels, dtype="Int8"),
            "small_score": small_f, "score": final_f, "escalated": escalated_f,
        }))
    frames = pd.concat(frame_tables, ignore_index=True)
    seconds = {"pass1": p1.seconds, "routing": plan.seconds, "pass2": p2.seconds, "frames": time.perf_counter() - t0}
    return ScoreResult(clips, frames, p1, p2, routing, seconds, [p.video for p in passes])


def video_list(store_url: str, videos: list[str] | None, split: str | None) -> list[str]:
    """The videos to score: those given, else the store's complete videos of `split`."""
    ids = videos if videos is not None else ClipStore.open(store_url).video_ids(split=split)
    if not ids:
        raise PipelineError(f"store {store_url} has no complete videos to score (split: {split or 'any'})")
    return list(ids)


def score_videos(
    store_url: str, small: Checkpoint, large: Checkpoint | None, budget: Budget, *, videos: list[str] | None = None,
    split: str | None = "test", router: RouterConfig = RouterConfig(), frame_mode: FrameMode = "clip",
    compute: Compute = Compute(), progress: bool = False,
) -> ScoreResult:
    """Score the store's videos (the test split by default) with both passes and the router: the
    stages of the score flow, called in a plain loop."""
    if frame_mode not in ("clip", "frame"):
        raise ParameterError(f"frame mode must be 'clip' or 'frame', got {frame_mode!r}")
    check_pair(small, large)
    t0 = time.perf_counter()
    ids = video_list(store_url, videos, split)
    bar = {"unit": "video", "leave": False, "dynamic_ncols": True, "disable": not progress}
    passes = [first_pass(store_url, small, v, large=large, compute=compute)
              for v in tqdm(ids, desc=f"pass 1 ({small.arch})", **bar)]
    plan = plan_routes(passes, small, budget, router=router, has_large=large is not None)
    todo = plan.escalated_starts(passes)  # empty without a large model
    second = {v: second_pass(store_url, large, v, st, compute=compute)  # type: ignore[arg-type]
              for v, st in tqdm(todo.items(), desc=f"pass 2 ({large.arch if large else ''})", **bar)}
    result = assemble(passes, plan, second, small, large, frame_mode=frame_mode)
    result.seconds["total"] = time.perf_counter() - t0
    return result


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
            f"time: {self.seconds['total']:.1f} s ({per_k:.2f} s per 1,000 frames); model time summed over videos, "
            f"which may run at once: pass 1 {self.seconds['pass1']:.1f} s, pass 2 {self.seconds['pass2']:.1f} s",
        ]
        lines += [f"{name}: {path}" for name, path in self.paths.items()]
        return "\n".join(lines)


def load_pair(root: str, dataset: str, small_path: str | None = None, large_path: str | None = None) -> tuple[Checkpoint, Checkpoint]:
    """The small and large checkpoints given, else the dataset's own under `<root>/checkpoints/`."""
    small = cached_checkpoint(small_path or find_checkpoint(root, dataset, "small"))
    large = cached_checkpoint(large_path or find_checkpoint(root, dataset, "large"))
    check_pair(small, large)
    return small, large


def compute_record(compute: Compute, result: ScoreResult) -> dict[str, Any]:
    """The compute settings as run.json records them, with the device and batch size each pass
    actually used (None for a model that scored no clip)."""
    return {
        "device": result.small.device or None, "requested_device": compute.device,
        "batch": {"small": result.small.batch or None, "large": result.large.batch or None},
        "batch_given": compute.batch is not None, "precision": compute.precision, "compile": compute.compile,
    }


def write_run(
    root: str, dataset: str, run_id: str, result: ScoreResult, small: Checkpoint, large: Checkpoint | None,
    budget: Budget, *, router: RouterConfig = RouterConfig(), frame_mode: FrameMode = "clip",
    compute: Compute = Compute(),
) -> ScoreSummary:
    """Write a run's clip and frame tables, then its run.json (last, so a run with a manifest is whole)."""
    clips_path = write_table(root, "clips", dataset, run_id, result.clips)
    frames_path = write_table(root, "frames", dataset, run_id, result.frames)
    manifest = {
        "run": run_id, "dataset": dataset, "store": workspace_store_url(root, dataset),
        "created_at": datetime.now(timezone.utc).isoformat(),
        **run_manifest(result, small, large, budget, router, frame_mode), "compute": compute_record(compute, result),
        "versions": package_versions(), "tables": {"clips": str(clips_path), "frames": str(frames_path)},
    }
    run_path = write_manifest(root, dataset, run_id, manifest)
    return ScoreSummary(
        dataset=dataset, run_id=run_id, clips=len(result.clips), frames=result.n_frames,
        escalated=int(result.routing.escalated.sum()), large_calls=result.large.calls, seconds=result.seconds,
        paths={"clips": str(clips_path), "frames": str(frames_path), "run": str(run_path)},
    )


def score_dataset(
    root: str, dataset: str, *, small_path: str | None = None, large_path: str | None = None, budget: Budget,
    run_id: str, router: RouterConfig = RouterConfig(), frame_mode: FrameMode = "clip", split: str | None = "test",
    compute: Compute = Compute(), progress: bool = False,
) -> ScoreSummary:
    """Score a dataset's store with both passes and write the run's clip and frame tables and run.json."""
    check_run_id(run_id)
    small, large = load_pair(root, dataset, small_path, large_path)
    url = workspace_store_url(root, dataset)
    result = score_videos(url, small, large, budget, split=split, router=router, frame_mode=frame_mode,
                          compute=compute, progress=progress)
    return write_run(root, dataset, run_id, result, small, large, budget, router=router, frame_mode=frame_mode,
                     compute=compute)
