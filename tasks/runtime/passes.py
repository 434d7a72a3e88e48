"""Model passes: a checkpoint's model over a list of clips, read in spans from the clip store.

`score_clips` gives raw scores (training calibrates with it); `run_pass` adds the checkpoint's
calibration; `first_pass` and `second_pass` are the two passes of scoring, one video at a time.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from vad.storage import ClipStore
from vad.tasks.runtime.compute import (
    Compute,
    available_cores,
    choose_batch,
    is_cpu_bound,
    pass_lock,
    pick_device,
    scoring_precision,
)
from vad.tasks.runtime.memory import release_freed_memory
from vad.tasks.runtime.calibration import cosine_distances
from vad.tasks.runtime.checkpoint import Checkpoint
from vad.tasks.runtime.model_input import ClipBatches, InputSpec, clip_index, prepare_clips

from vad.errors import NonFiniteScoreError

# frames read per batch by a model with per-frame features: 2^23 pixels (about 97 frames of 240x360),
# so that a video holds several batches and the next is read while one is scored (`read_ahead`)
SPAN_PIXELS = 1 << 23
FRAME_CHUNK = 8  # frames converted and featurised at a time (`span_features`)
# what a model with per-frame features has: `frame_features` (1, C, L, H, W) -> (L, ...) features
# of each frame, reading `frame_lookback` frames before it; `clip_rows()` (T,) the rows a clip's
# frames take, from its first; `score_features` (B, T, ...) -> ClipScores, equal to `score` of the clips
PER_FRAME = ("frame_features", "frame_lookback", "clip_rows", "score_features")
# what a model whose per-frame results are not tensors has (`objects`: each frame's objects):
# `frame_records` ((1, C, L, H, W) span, (B,) each clip's first row) -> its per-frame results, each
# frame's found once (with a clip-start alternative where a clip's first frame differs); `score_records`
# (those, the (B,) rows) -> ClipScores, equal to `score` of the clips
PER_FRAME_RECORDS = ("frame_records", "score_records")


@dataclass
class ScoredClips:
    """What every pass of a model over a list of clips gives, arrays in the order of the clips given."""

    raw: np.ndarray  # (N,) raw clip scores
    uncertainty: np.ndarray  # (N,)
    frame_errors: np.ndarray  # (N, T) raw per-frame scores
    seconds: float
    calls: int  # clips the model ran on
    device: str = ""  # where it ran ("" when no clip was scored)
    batch: int = 0  # clips per model call (0 when no clip was scored)


@dataclass(kw_only=True)
class RawScores(ScoredClips):
    """A model's raw output, with the embeddings (training fits its calibration from these)."""

    embedding: np.ndarray  # (N, D)

    @classmethod
    def empty(cls, clip_len: int) -> RawScores:
        z = np.zeros(0)
        return cls(z, z, np.zeros((0, clip_len), np.float32), 0.0, 0, embedding=np.zeros((0, 0), np.float32))


@dataclass(kw_only=True)
class PassOutput(ScoredClips):
    """A pass through the checkpoint's calibration: what scoring keeps of each clip."""

    calibrated: np.ndarray  # (N,) percentile ranks against the model's normal clips
    ood_distance: np.ndarray  # (N,) cosine distance to the normal centroid

    @classmethod
    def empty(cls, clip_len: int) -> PassOutput:
        z = np.zeros(0)
        return cls(z, z, np.zeros((0, clip_len), np.float32), 0.0, 0, calibrated=z, ood_distance=z)

    def take(self, rows: np.ndarray) -> PassOutput:
        """The clips at positions `rows`, in that order (seconds shared out by clip count)."""
        rows = np.asarray(rows, dtype=np.int64)
        share = self.seconds * len(rows) / max(self.calls, 1)
        return PassOutput(self.raw[rows], self.uncertainty[rows], self.frame_errors[rows], share, len(rows), self.device,
                          self.batch, calibrated=self.calibrated[rows], ood_distance=self.ood_distance[rows])

    @classmethod
    def concat(cls, parts: list[PassOutput], clip_len: int) -> PassOutput:
        """The passes of several videos as one, in the order given."""
        if not parts:
            return cls.empty(clip_len)
        ran = [p for p in parts if p.calls]
        arrays = {f: np.concatenate([getattr(p, f) for p in parts])
                  for f in ("raw", "uncertainty", "frame_errors", "calibrated", "ood_distance")}
        return cls(**arrays, seconds=sum(p.seconds for p in parts), calls=sum(p.calls for p in parts),
                   device=ran[0].device if ran else "", batch=max((p.batch for p in ran), default=0))


def score_clips(
    checkpoint: Checkpoint, store_url: str, index: list[tuple[str, int]], *, compute: Compute = Compute(),
    workers: int | None = None,
) -> RawScores:
    """Raw scores of the clips `index` ((video, start) pairs) with the checkpoint's model, under
    inference mode; needs no calibration, so training fits its calibration with this same pass.

    Clips are read as uint8 in batches of one video, each run of overlapping clips as one span of
    frames (`ClipBatches`), by a DataLoader: in this process on a CPU; on CUDA by one spawned reader
    process reading about 64 clips ahead into pinned memory, copied without blocking, when there
    are enough clips to pay for its start-up (a few seconds). They are converted on the compute
    device. The model is the checkpoint's scoring model (`Checkpoint.scoring_model`), built once per
    device; with `compile` a short last batch is padded to the next power of two, so few shapes are
    compiled. A model with per-frame features (`PER_FRAME`: `motion_patch`; `PER_FRAME_RECORDS`:
    `objects`) reads each batch's frames once (`read_spans`, about `SPAN_PIXELS` pixels a batch
    unless `batch` is given) and scores clips assembled from them, uncompiled. Passes on one GPU,
    and compiled passes anywhere, take turns (`pass_lock`), except those of a model whose work is
    on the CPU (`is_cpu_bound`). A NaN or infinite score fails the video here (`check_finite`).
    """
    spec = checkpoint.input
    if not index:
        return RawScores.empty(spec.clip_len)
    dev = pick_device(compute.device)
    precision, compile = compute.precision, compute.compile
    torch.set_num_threads(available_cores())
    model = checkpoint.scoring_model(dev, compile=compile)
    span_ok = not compile and not (spec.motion or spec.flow)
    per_frame = span_ok and all(hasattr(model, a) for a in PER_FRAME)
    records = span_ok and not per_frame and all(hasattr(model, a) for a in PER_FRAME_RECORDS)
    if per_frame or records:
        rows = model.clip_rows().to(dev) if per_frame else None
        h, w = checkpoint.source["frame_size"][:2]
        batch = compute.batch or max(4, (SPAN_PIXELS // (h * w) - spec.clip_len) // spec.stride + 1)
    else:
        batch = compute.batch or choose_batch(checkpoint, dev, precision=precision)
    cpu_bound = is_cpu_bound(checkpoint.arch)
    if workers is None:
        # On a CPU, reading in the scoring process costs as much as a reader process and holds
        # ~370 MB less (a 10-minute 720p pass: 49.1 s without, 48.4 s with); on CUDA a reader
        # process keeps the next batch coming while the GPU works. A daemon process (a Dask
        # worker) may not start children.
        spawn_ok = len(index) >= 400 and not multiprocessing.current_process().daemon
        workers = 1 if dev.type == "cuda" and spawn_ok else 0
    batches = ClipBatches(store_url, index, spec.clip_len, batch, spans=per_frame or records)
    loader = read_ahead(batches) if (per_frame or records) and not workers and dev.type == "cpu" else DataLoader(
        batches, batch_size=None, num_workers=workers,
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
    with contextlib.ExitStack() as stack:
        stack.callback(torch.set_num_threads, available_cores())  # as the pass found it, for what runs next
        if per_frame and dev.type == "cpu":
            # FRAME_CHUNK-frame steps are too small for intra-op threads (on 2 busy cores, 2 threads
            # ran pass 1 at 129 frames/s, 1 thread at 432); the next span is read on a thread meanwhile
            torch.set_num_threads(1)
        stack.enter_context(pass_lock(dev, compile, cpu_bound=cpu_bound))
        stack.enter_context(torch.inference_mode())
        stack.enter_context(scoring_precision(dev, precision))
        for clips in loader:
            if per_frame:  # (L, H, W, C) frames, (B,) each clip's first row in them
                span, offsets = clips
                feats = span_features(model, span, spec, dev)
                m, s = len(offsets), model.score_features(feats[offsets.to(dev)[:, None] + rows])
            elif records:  # the same, the per-frame results the model's own
                span, offsets = clips
                m, s = len(offsets), model.score_records(span_records(model, span, offsets, spec, dev), offsets)
            else:
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
    check_finite(checkpoint, index, raw, frames, emb)
    return RawScores(
        raw=raw, uncertainty=unc, embedding=emb, frame_errors=frames, seconds=time.perf_counter() - t0, calls=n,
        device=str(dev), batch=batch,
    )


def read_ahead(batches: ClipBatches) -> Iterator[Any]:
    """The batches in order, each next one read on a thread while the caller works on the one before
    (Zarr decompresses without the GIL)."""
    with ThreadPoolExecutor(1, thread_name_prefix="vad-read-ahead") as pool:
        ahead = pool.submit(batches.__getitem__, 0) if len(batches) else None
        for i in range(len(batches)):
            current = ahead.result()  # type: ignore[union-attr]
            ahead = pool.submit(batches.__getitem__, i + 1) if i + 1 < len(batches) else None
            yield current


def span_features(model: torch.nn.Module, span: torch.Tensor, spec: InputSpec, dev: torch.device) -> torch.Tensor:
    """uint8 frames (L, H, W, C) -> the model's per-frame features (L, ...), converted and computed
    `FRAME_CHUNK` frames at a time (each with the `frame_lookback` frames before it), so that the
    float frames of a chunk stay in the CPU's cache between the steps: twice as fast as whole spans.
    On a CPU, frames stored at the model's size go to the model's own uint8 path when it has one
    (`stored_frame_features`)."""
    stored = tuple(span.shape[1:3]) == (spec.height, spec.width) and spec.channels == 1 and span.shape[-1] in (1, 3)
    if dev.type == "cpu" and stored and hasattr(model, "stored_frame_features") and model.value_range == (0.0, 1.0):
        return model.stored_frame_features(span.numpy())
    back, parts = model.frame_lookback, []
    for i in range(0, len(span), FRAME_CHUNK):
        lo = max(0, i - back)
        x = prepare_clips(span[None, lo : i + FRAME_CHUNK], spec, model.value_range, device=dev)
        parts.append(model.frame_features(x)[i - lo :])
    return torch.cat(parts)


def span_records(model: torch.nn.Module, span: torch.Tensor, offsets: torch.Tensor, spec: InputSpec, dev: torch.device) -> Any:
    """uint8 frames (L, H, W, C), (B,) each clip's first row -> the model's per-frame records
    (`frame_records`); on a CPU, frames stored at the model's size go to the model's own uint8 path
    when it has one (`stored_frame_records`), which skips the span's conversion to float."""
    stored = tuple(span.shape[1:3]) == (spec.height, spec.width) and spec.channels == 1 and span.shape[-1] in (1, 3)
    if dev.type == "cpu" and stored and hasattr(model, "stored_frame_records") and model.value_range == (0.0, 1.0):
        return model.stored_frame_records(span.numpy(), offsets)
    return model.frame_records(prepare_clips(span[None], spec, model.value_range, device=dev), offsets)


def check_finite(checkpoint: Checkpoint, index: list[tuple[str, int]], raw: np.ndarray, frames: np.ndarray,
                 embedding: np.ndarray) -> None:
    """Fail at the pass, naming the video, when a clip's score, frame scores or embedding is NaN or
    infinite: otherwise it travels through calibration and routing and breaks only the report."""
    bad = ~(np.isfinite(raw) & np.isfinite(frames).all(axis=1) & np.isfinite(embedding).all(axis=1))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        vid, start = index[first]
        count = int(bad[[v == vid for v, _ in index]].sum())
        raise NonFiniteScoreError(
            f"checkpoint {checkpoint.path or checkpoint.arch} gave NaN or infinite scores on video {vid!r} "
            f"({count} clip(s), the first at frame {start}): its weights or this video's frames are broken"
        )


def run_pass(
    checkpoint: Checkpoint, store_url: str, index: list[tuple[str, int]], *, compute: Compute = Compute(),
    workers: int | None = None,
) -> PassOutput:
    """`score_clips`, then the checkpoint's calibration: percentile ranks and distances from the
    normal embedding centroid."""
    s = score_clips(checkpoint, store_url, index, compute=compute, workers=workers)
    if not s.calls:
        return PassOutput.empty(checkpoint.input.clip_len)
    cal = checkpoint.calibration
    return PassOutput(
        raw=s.raw, calibrated=cal.calibrate(s.raw), uncertainty=s.uncertainty,
        ood_distance=cosine_distances(s.embedding, cal.centroid), frame_errors=s.frame_errors, seconds=s.seconds,
        calls=s.calls, device=s.device, batch=s.batch,
    )


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
    source: str = ""  # the file as the user named it: its path in the dataset, else its URI


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
    seen = np.concatenate([[0], np.cumsum(video.scene_cut)])  # cuts among frames [0, i)
    cuts = seen[starts + t] - seen[starts + 1] > 0  # a cut at frames start+1 .. start+t-1
    out = run_pass(small, store_url, index, compute=compute)
    source = video.attrs.get("source_relpath") or video.attrs.get("source_uri", "")
    return VideoPass(video_id, video.n_frames, video.labels, starts, cuts, out, source)


def second_pass(
    store_url: str, large: Checkpoint, video_id: str, starts: np.ndarray, *, compute: Compute = Compute(),
) -> PassOutput:
    """Re-score the clips of one video that start at `starts` with the large model."""
    index = [(video_id, int(st)) for st in starts]
    return run_pass(large, store_url, index, compute=compute)
