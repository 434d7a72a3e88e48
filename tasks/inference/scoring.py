"""Two-pass scoring: the small model scores every clip, the router picks clips, the large model
re-scores only those, and clip scores become frame scores.

Frame scores (`frame_mode`):
- `"clip"` (default): each frame gets the mean of the final calibrated scores of the clips that
  cover it;
- `"frame"`: each frame gets the mean, over the clips that cover it, of that clip's own per-frame
  error for the frame, ranked by the model that scored the clip against its held-out clips'
  per-frame errors (`Calibration.calibrate_frames`).
Frames after the last clip's end (when (N - T) is not a multiple of the stride) take the value of
the last clip that reaches furthest, so every frame has a score.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
import pandas as pd
from pydantic import BeforeValidator
from tqdm import tqdm
from vad.storage import ClipStore, check_run_id
from vad.tasks.runtime.compute import Compute, pick_device
from vad.tasks.runtime.passes import PassOutput, VideoPass, first_pass, second_pass
from vad.tasks.inference.events import EventSettings
from vad.tasks.inference.routing import (
    BatchBudget,
    Budget,
    RouterConfig,
    Routing,
    Signals,
    TokenBucket,
    check_fusion,
    compute_signals,
    fuse,
    route,
    router_from_record,
)
from vad.tasks.runtime.checkpoint import Checkpoint, check_pair, load_pair
from vad.tasks.records import ScoreSummary, write_run
from vad.tasks.workspace import store_url as workspace_store_url

from vad.errors import CheckpointError, ParameterError, PipelineError

FrameMode = Literal["clip", "frame"]
FRAME_MODES: tuple[str, ...] = ("clip", "frame")


def check_frame_mode(mode: str) -> str:
    if mode not in FRAME_MODES:
        raise ParameterError(f"frame mode must be one of {', '.join(FRAME_MODES)}, got {mode!r}")
    return mode


def resolve_fusion(fusion: str | None, large: Checkpoint | None) -> str:
    """The fusion rule a run uses: `fusion` when given (checked), else the large checkpoint's choice
    (recorded by selection at training, `Checkpoint.chosen_fusion`), else "replace"."""
    if fusion is not None:
        return check_fusion(fusion)
    return check_fusion(large.chosen_fusion if large is not None else "replace")


def resolve_router(router: RouterConfig | None, large: Checkpoint | None) -> RouterConfig:
    """The router a run uses: `router` when given, else the large checkpoint's choice on validation
    (`Checkpoint.chosen_router`), else the default `RouterConfig()`."""
    if router is not None:
        return router
    chosen = large.chosen_router if large is not None else None
    return router_from_record(chosen) if chosen is not None else RouterConfig()


def budget_from_fields(value: object) -> object:
    """A budget from a deployment's parameters: `{fraction: F}` is a batch budget, `{capacity: C,
    refill: R}` a token bucket, told apart by their fields so that a refusal is about the kind meant
    (pydantic's plain union would report both). Budgets already built pass through."""
    if not isinstance(value, dict):
        return value
    kind = TokenBucket if {"capacity", "refill"} & set(value) else BatchBudget
    wanted = {"capacity", "refill"} if kind is TokenBucket else {"fraction"}
    try:
        if set(value) != wanted:
            raise TypeError
        fields = {k: float(v) for k, v in value.items()}  # floats, as from the CLI: the same run key
    except (TypeError, ValueError):
        raise ParameterError(f"a budget is {{fraction: F}} or {{capacity: C, refill: R}} (numbers), got {value}") from None
    return kind(**fields)


# Before pydantic's own checks, which leave the JSON schema the server checks a deployment against
# as it is (a discriminated union's `oneOf` would refuse `{fraction: 0.2}`, which that schema lets
# both kinds accept).
BudgetParameter = Annotated[Budget, BeforeValidator(budget_from_fields)]


@dataclass(frozen=True)
class ScoreSettings:
    """How a run scores: the budget, the router, how frame scores are made, where the passes
    run and how frame scores become events. The parameter object of the `score` flow and part of `backfill`'s: the CLI builds it from
    its options, a deployment nests the same fields (prefect.yaml), and it is checked once, here,
    when built. Everything in it is recorded in the run's run.json."""

    budget: BudgetParameter = BatchBudget(0.2)
    router: RouterConfig | None = None  # None: the large checkpoint's choice on validation (`resolve_router`)
    frame_mode: FrameMode = "clip"
    compute: Compute = Compute()
    events: EventSettings = EventSettings()  # how frame scores become the run's events table
    fusion: str | None = None  # escalated clips' final score (routing.FUSIONS); None: the large checkpoint's choice

    def __post_init__(self) -> None:
        check_frame_mode(self.frame_mode)
        if self.fusion is not None:
            check_fusion(self.fusion)


def score_inputs(root: str, dataset: str, run_id: str, small: str | None, large: str | None,
                 compute: Compute = Compute(), *, here: bool = True) -> tuple[str, Checkpoint, Checkpoint]:
    """What a scoring run of `dataset` reads and where it writes, checked: the run id, the store's
    URL, the checkpoint pair (the paths given, else the dataset's own: `check_pair`) and that both read
    the store's frames (`Checkpoint.check_store`), and, when the passes run
    `here` (not on a Dask cluster elsewhere), that `compute`'s device is on this machine. The score
    flow starts with this; the CLI calls it before starting Prefect, to fail in a second."""
    check_run_id(run_id)
    if here:
        pick_device(compute.device)
    url = workspace_store_url(root, dataset)
    store = ClipStore.open(url)
    small_ck, large_ck = load_pair(root, dataset, small, large)
    for ck in (small_ck, large_ck):
        ck.check_store(store)  # a store of frames the models cannot read: one line, before any pass
    return url, small_ck, large_ck


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
    passes: list[VideoPass] = field(default_factory=list, repr=False)  # pass 1 per video (a benchmark replays it)
    fusion: str = "replace"  # the rule that made escalated clips' scores (routing.fuse)
    router: RouterConfig = field(default_factory=RouterConfig)  # the router that chose them

    @property
    def n_frames(self) -> int:
        return len(self.frames)


@dataclass
class RoutePlan:
    """The router's decision over all clips of the given videos, in stream order."""

    signals: Signals
    routing: Routing
    video_of: np.ndarray  # (N,) video id of each clip
    seconds: float
    router: RouterConfig = field(default_factory=RouterConfig)

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
    return RoutePlan(signals, routing, video_of, time.perf_counter() - t0, router)


def video_frame_scores(
    n_frames: int, starts: np.ndarray, clip_len: int, escalated: np.ndarray, small: np.ndarray, final: np.ndarray,
    small_frames: np.ndarray | None = None, final_frames: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """One video's frame columns from its clips: `small_score` and `score` from the small-model and
    final clip scores (N,), or, given them, from the (N, T) per-frame scores (frame mode "frame"),
    and `escalated` (a frame inside an escalated clip). What `assemble` and every replay of a run
    (`tasks.evaluation.pareto`) make frames with."""
    cover = (small, final) if small_frames is None else (small_frames, final_frames)
    return {
        "small_score": aggregate_frames(n_frames, starts, clip_len, cover[0]),
        "score": aggregate_frames(n_frames, starts, clip_len, cover[1]),
        "escalated": aggregate_frames(n_frames, starts, clip_len, np.asarray(escalated, float)) > 0,
    }


def assemble(
    passes: list[VideoPass], plan: RoutePlan, second: dict[str, PassOutput], small: Checkpoint,
    large: Checkpoint | None, *, frame_mode: FrameMode = "clip", fusion: str = "replace",
) -> ScoreResult:
    """Clip and frame tables from the passes and the routing (see the module docstring for frame
    modes); escalated clips score `fuse(fusion, small, large)`, per frame in frame mode "frame"."""
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
    final = p1.calibrated.astype(np.float64)
    final[chosen] = fuse(fusion, p1.calibrated[chosen], p2.calibrated)
    clips = pd.DataFrame({
        "video": video_of.astype(str), "source": pd.Series(video_of).map({p.video: p.source for p in passes}).to_numpy(str),
        "clip": clip_no.astype(np.int32), "start_frame": starts.astype(np.int32),
        "end_frame": (starts + t).astype(np.int32),
        "small_raw": p1.raw, "small_score": p1.calibrated, "uncertainty": p1.uncertainty,
        "gray_distance": signals.gray_distance, "ood_distance": signals.ood_distance,
        "instability": signals.instability,
        **{f"signal_{k}": signals.flags.get(k, np.zeros(len(starts), bool)) for k in ("gray_zone", "ood", "unstable", "scene_cut")},
        "difficulty": routing.difficulty, "escalated": routing.escalated, "budget_held": routing.held,
        "reasons": routing.reasons, "large_raw": large_raw, "large_score": large_score, "score": final,
    })
    # per-frame errors of the model that scored each clip, ranked against that model's held-out
    # per-frame errors (for frame_mode="frame"; a clip-level calibration would misplace their tails)
    if frame_mode == "frame":
        small_frames_cal = small.calibration.calibrate_frames(p1.frame_errors)
        chosen_frames_cal = small_frames_cal.copy()
        if len(chosen):
            large_frames_cal = large.calibration.calibrate_frames(p2.frame_errors)  # type: ignore[union-attr]
            chosen_frames_cal[chosen] = fuse(fusion, small_frames_cal[chosen], large_frames_cal)
        # kept with the clips, so that a replay of the run (the report's budget sweep) has them
        clips["small_frame_scores"] = list(small_frames_cal)
        large_frames = np.full_like(small_frames_cal, np.nan)
        if len(chosen):
            large_frames[chosen] = large_frames_cal
        clips["large_frame_scores"] = [r if e else None for r, e in zip(large_frames, routing.escalated)]
    frame_tables = []
    for p in passes:
        rows = np.flatnonzero(video_of == p.video)
        per_frame = (small_frames_cal[rows], chosen_frames_cal[rows]) if frame_mode == "frame" else (None, None)
        labels = p.labels.astype("float64")
        labels[labels < 0] = np.nan
        frame_tables.append(pd.DataFrame({
            "video": p.video, "frame": np.arange(p.n_frames, dtype=np.int32), "label": pd.array(labels, dtype="Int8"),
            **video_frame_scores(p.n_frames, starts[rows], t, routing.escalated[rows], p1.calibrated[rows], final[rows],
                                 *per_frame),
        }))
    frames = pd.concat(frame_tables, ignore_index=True)
    seconds = {"pass1": p1.seconds, "routing": plan.seconds, "pass2": p2.seconds, "frames": time.perf_counter() - t0}
    return ScoreResult(clips, frames, p1, p2, routing, seconds, [p.video for p in passes], passes, fusion, plan.router)


def video_list(store_url: str, videos: list[str] | None, split: str | None) -> list[str]:
    """The videos to score: those given, else the store's complete videos of `split`."""
    ids = videos if videos is not None else ClipStore.open(store_url).video_ids(split=split)
    if not ids:
        raise PipelineError(f"store {store_url} has no complete videos to score (split: {split or 'any'})")
    return list(ids)


class VideoMap:
    """How `score_videos` runs its per-video stages: here, a plain loop in this process (with a
    progress bar). The score flow maps the passes as Prefect tasks (`flows/score.py`), the throughput
    benchmark times each stage; both subclass this, so the orchestration itself exists once."""

    def __init__(self, *, progress: bool = False) -> None:
        self.progress = progress

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Around each stage: "pass1", "routing", "pass2", "frames"."""
        yield

    def pass1(self, store_url: str, small: Checkpoint, large: Checkpoint | None, videos: list[str],
              compute: Compute) -> list[VideoPass]:
        """`first_pass` of each video, in the order given."""
        return [first_pass(store_url, small, v, large=large, compute=compute) for v in self._bar(videos, f"pass 1 ({small.arch})")]

    def pass2(self, store_url: str, large: Checkpoint, todo: dict[str, np.ndarray], compute: Compute) -> dict[str, PassOutput]:
        """`second_pass` of each video with escalated clips (`todo`: video -> clip start frames)."""
        return {v: second_pass(store_url, large, v, todo[v], compute=compute) for v in self._bar(list(todo), f"pass 2 ({large.arch})")}

    def _bar(self, items: list[str], desc: str) -> list[str] | tqdm:
        if not self.progress:
            return items
        return tqdm(items, desc=desc, unit="video", leave=False, dynamic_ncols=True)


class ReplayMap(VideoMap):
    """Pass 1 replayed from an earlier run, and pass 2 too where the large model already scored every
    clip (`large_all`: video -> its pass over all the video's clips): routed runs at several budgets
    then cost only routing and assembly, and give exactly what a real run would. `pass2_wall` is the
    wall time of the last pass 2 (0 when replayed)."""

    def __init__(self, passes: list[VideoPass], large_all: dict[str, PassOutput] | None = None, *,
                 progress: bool = False) -> None:
        super().__init__(progress=progress)
        self.passes, self.large_all, self.pass2_wall = passes, large_all, 0.0

    def pass1(self, store_url: str, small: Checkpoint, large: Checkpoint | None, videos: list[str],
              compute: Compute) -> list[VideoPass]:
        by_id = {p.video: p for p in self.passes}
        return [by_id[v] for v in videos]

    def pass2(self, store_url: str, large: Checkpoint, todo: dict[str, np.ndarray], compute: Compute) -> dict[str, PassOutput]:
        t0 = time.perf_counter()
        if self.large_all is None:
            out = super().pass2(store_url, large, todo, compute)
        else:
            starts = {p.video: p.starts for p in self.passes}
            out = {v: self.large_all[v].take(np.searchsorted(starts[v], st)) for v, st in todo.items()}
        self.pass2_wall = time.perf_counter() - t0
        return out


def score_videos(
    store_url: str, small: Checkpoint, large: Checkpoint | None, budget: Budget, *, videos: list[str] | None = None,
    split: str | None = "test", router: RouterConfig | None = None, frame_mode: FrameMode = "clip",
    compute: Compute = Compute(), mapper: VideoMap | None = None, fusion: str | None = None,
) -> ScoreResult:
    """Score the store's videos (the test split by default): pass 1 over every clip, the router over
    all clips together, pass 2 on the escalated ones, then clip and frame tables. The one
    orchestration of scoring; `mapper` says how the per-video passes run (a plain loop by default);
    `fusion` is the rule for escalated clips and `router` the router (None: the large checkpoint's
    choices, `resolve_fusion` and `resolve_router`)."""
    check_frame_mode(frame_mode)
    rule = resolve_fusion(fusion, large)
    router = resolve_router(router, large)
    check_pair(small, large)
    if frame_mode == "frame":  # refused before the passes, not after them
        for ck in (small, large):
            if ck is not None and ck.calibration.frames is None:
                raise CheckpointError(f"checkpoint {ck.path or ck.arch} has no frame-level calibration (it predates it); "
                                      "retrain it to score with frame mode 'frame'")
    mapper = mapper or VideoMap()
    t0 = time.perf_counter()
    ids = video_list(store_url, videos, split)
    with mapper.stage("pass1"):
        passes = mapper.pass1(store_url, small, large, ids, compute)
    with mapper.stage("routing"):
        plan = plan_routes(passes, small, budget, router=router, has_large=large is not None)
    todo = plan.escalated_starts(passes)  # empty without a large model
    with mapper.stage("pass2"):
        second = mapper.pass2(store_url, large, todo, compute) if todo else {}  # type: ignore[arg-type]
    with mapper.stage("frames"):
        result = assemble(passes, plan, second, small, large, frame_mode=frame_mode, fusion=rule)
    result.seconds["total"] = time.perf_counter() - t0
    return result


def score_dataset(
    root: str, dataset: str, *, small_path: str | None = None, large_path: str | None = None, budget: Budget,
    run_id: str, router: RouterConfig | None = None, frame_mode: FrameMode = "clip", split: str | None = "test",
    compute: Compute = Compute(), progress: bool = False, events: EventSettings = EventSettings(),
    fusion: str | None = None,
) -> ScoreSummary:
    """Score a dataset's store with both passes and write the run's clip, frame and event tables and run.json."""
    check_run_id(run_id)
    small, large = load_pair(root, dataset, small_path, large_path)
    url = workspace_store_url(root, dataset)
    result = score_videos(url, small, large, budget, split=split, router=router, frame_mode=frame_mode,
                          compute=compute, mapper=VideoMap(progress=progress), fusion=fusion)
    return write_run(root, dataset, run_id, result, small, large, budget, frame_mode=frame_mode,
                     compute=compute, events=events)
