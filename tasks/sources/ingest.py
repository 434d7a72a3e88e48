"""Ingest: decode a source with FFmpeg into its video group of a clip store, streaming in chunks."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
from vad.storage import ClipStore
from vad.tasks.sources.datasets import FOLDER_LAYOUT, VideoSource
from vad.tasks.sources.ffmpeg_io import (
    DecodeSpec,
    FrameTimes,
    decode_time_limit,
    ffmpeg_exe,
    ffmpeg_version,
    probe,
    read_frames,
)

from vad.errors import DatasetLayoutError, FFmpegError, NotFoundError, ParameterError, PipelineError

# Sources taller than this are scaled down to it (keeping the aspect ratio) unless a size is given:
# full-resolution frames would make stores of an hour of 1080p footage hundreds of GB.
DEFAULT_MAX_HEIGHT = 480
SCENE_CUT_THRESHOLD = 0.5  # histogram correlation of adjacent frames below this marks a cut
_HIST_BINS = 32
HIST_PIXELS = 5400  # pixels per frame the scene-cut histogram samples, about (every 4th at 240x360)
IMAGE_SEQUENCE_FPS = 25  # the rate FFmpeg's image2 reads a frame folder at
# Frame times are stored as runs of equal steps; a stream whose frame interval changes more often
# than this (jittery variable-rate footage) keeps only its start time, so attributes stay small.
MAX_TIME_RUNS = 1000
# A source may differ this much (relatively) in aspect ratio from `Preprocess.aspect_of` and still be
# scaled to `size`: sizes made even, or a 1080p camera stored at 480x852, move it by well under 1%.
ASPECT_TOLERANCE = 0.01


@dataclass(frozen=True)
class Preprocess:
    """How frames are stored: size (H, W) or None for the source's own, gray or RGB, frame rate.

    `chunk_frames` is the number of frames per stored chunk; keep it the clip length the models
    read so a clip touches one or two chunks. `aspect_of`, an (H, W) such as the original size of a
    model's training footage, makes a source of another aspect ratio an error instead of stretching
    it to `size`; it checks the source and is not part of how frames are stored (`to_attrs`).
    """

    size: tuple[int, int] | None = None
    gray: bool = False
    fps: float | None = None
    chunk_frames: int = 16
    aspect_of: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 8 or max(self.size) > 8192):
            raise ParameterError(f"size must be (height, width) between 8 and 8192, got {self.size}")
        if self.size is not None and any(v % 2 for v in self.size):
            raise ParameterError(f"size must be even in both dimensions, got {self.size[0]}x{self.size[1]}")
        if self.fps is not None and not 0 < self.fps <= 240:
            raise ParameterError(f"fps must be in (0, 240], got {self.fps}")
        if not 1 <= self.chunk_frames <= 1024:
            raise ParameterError(f"chunk_frames must be in [1, 1024], got {self.chunk_frames}")
        if self.aspect_of is not None and (len(self.aspect_of) != 2 or min(self.aspect_of) < 1):
            raise ParameterError(f"aspect_of must be a (height, width), got {self.aspect_of}")

    def to_attrs(self) -> dict[str, Any]:
        out = asdict(self)
        out["size"] = list(self.size) if self.size else None
        del out["aspect_of"]
        return out

    def check_aspect(self, source: VideoSource, height: int, width: int) -> None:
        """Refuse a `height` x `width` source that `size` would stretch (see `aspect_of`)."""
        if self.aspect_of is None or self.size is None:
            return
        ref_h, ref_w = self.aspect_of
        if abs((width / height) / (ref_w / ref_h) - 1) > ASPECT_TOLERANCE:
            raise ParameterError(
                f"{source.uri}: video {source.video_id!r} is {height}x{width}, but the model's footage was "
                f"{ref_h}x{ref_w} (stored at {self.size[0]}x{self.size[1]}); another aspect ratio, refused "
                "rather than stretch it (train a model on this camera, or crop its footage)"
            )

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The stored (H, W) for a source of `height` x `width`."""
        if self.size is not None:
            return self.size
        if height > DEFAULT_MAX_HEIGHT:
            width, height = round(width * DEFAULT_MAX_HEIGHT / height), DEFAULT_MAX_HEIGHT
        return height - height % 2, width - width % 2


def parse_size(text: str) -> tuple[int, int]:
    """'240x360' -> (240, 360): height first, as in the store's (N, H, W, C) frames."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise ParameterError(f"size must look like HEIGHTxWIDTH (e.g. 240x360), got {text!r}") from exc
    return height, width


@dataclass(frozen=True)
class IngestResult:
    video_id: str
    split: str
    status: Literal["ingested", "updated", "skipped"]  # updated: labels or split rewritten, frames kept
    frames: int
    seconds: float
    note: str | None = None  # one line for the summary when labels or split changed


def batch_frames(chunk_frames: int, frame_bytes: int, target_bytes: int = 32 << 20) -> int:
    """Frames per write: whole chunks adding up to about `target_bytes`, and at least two chunks.

    Zarr compresses the chunks of one write in parallel, so two or more chunks per write keep
    both cores busy even for large frames; the byte bound keeps memory flat (a 720p batch is two
    44 MB chunks).
    """
    return chunk_frames * max(2, target_bytes // (chunk_frames * frame_bytes))


def content_hash(source: VideoSource) -> str:
    """BLAKE2b of the source's bytes (of every frame file, with its name, for a frame folder)."""
    digest = hashlib.blake2b(digest_size=16)
    if source.kind == "file" and Path(source.uri).exists() and not Path(source.uri).is_file():
        # A pipe or a device could be read only once (here), and then FFmpeg would find nothing.
        raise NotFoundError(f"{source.uri}: not a regular file")
    try:
        for path in source.files:
            if source.kind == "frames":
                digest.update(Path(path).name.encode() + b"\0")
            with open(path, "rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
    except OSError as exc:
        raise FFmpegError(source.uri, f"cannot read the source ({exc.strerror})") from exc
    return digest.hexdigest()


def ingest_video(
    store_url: str,
    source: VideoSource,
    prep: Preprocess,
    *,
    dataset: str,
    force: bool = False,
    storage_options: dict[str, Any] | None = None,
    source_uri: str | None = None,
) -> IngestResult:
    """Decode `source` into its group of the store at `store_url`, unless it is already there.

    An unchanged source (same content hash, preprocessing and frame-rate mode, group complete) is
    not decoded again: when its labels or split changed (an edited labels.csv, a file moved from
    train/ to test/) they are rewritten in place ("updated", with a note), else it is skipped. A
    changed source or an unfinished group is redone, and so is a group from before the
    frame-rate mode was recorded (its frames may have been padded to a constant rate). On any
    error the half-written group is removed and the error names the source. `source_uri` is
    recorded instead of `source.uri` (a remote file decoded from a local copy).
    """
    t0 = time.perf_counter()
    store = ClipStore.open_or_create(store_url, dataset=dataset, storage_options=storage_options)
    source_hash = content_hash(source)
    old = store.status(source.video_id)
    mode = "passthrough" if prep.fps is None else "resampled"
    if (
        not force and old is not None and old.get("complete")
        and old.get("source_hash") == source_hash and old.get("preprocess") == prep.to_attrs()
        and old.get("frame_rate_mode") == mode  # absent: written at a constant rate, maybe with padded frames
    ):
        note = refresh_labels(store, source, source_uri or source.uri)
        status = "updated" if note else "skipped"
        return IngestResult(source.video_id, source.split, status, int(old["frame_count"]), time.perf_counter() - t0, note)
    if prep.fps is not None and (source.labels is not None or source.label_ranges is not None):
        raise ParameterError(
            f"{source.uri}: changing the frame rate would misalign the frame labels of video "
            f"{source.video_id!r}; ingest labelled datasets at their own frame rate"
        )

    frames = source.frame_files if source.kind == "frames" else None
    info = probe(frames[0] if frames else source.uri, image_sequence=frames is not None)
    prep.check_aspect(source, info.height, info.width)
    height, width = prep.output_size(info.height, info.width)
    spec = DecodeSpec(height, width, 1 if prep.gray else 3, prep.fps)
    duration = len(frames) / IMAGE_SEQUENCE_FPS if frames else info.duration
    rate = prep.fps or info.fps
    # What a whole decode gives: FFmpeg's messages are warnings only when no frame is missing.
    expected = len(frames) if frames else (round(duration * rate) if duration and rate else None)
    attrs = {
        "video_id": source.video_id,
        "split": source.split,
        "source_uri": source_uri or source.uri,
        "source_relpath": source.relative,
        "source_kind": source.kind,
        "source_hash": source_hash,
        "source_codec": info.codec,
        "original_size": [info.height, info.width],
        "source_fps": info.fps,
        "source_duration": duration,
        "fps": prep.fps or info.fps,
        # passthrough: every decoded frame once, in decode order; resampled: FFmpeg's fps filter
        "frame_rate_mode": mode,
        "resampled_fps": prep.fps,
        "preprocess": prep.to_attrs(),
        "frame_size": [height, width, spec.channels],
        "ffmpeg": Path(ffmpeg_exe()).name,
        "ffmpeg_version": ".".join(map(str, ffmpeg_version() or ())) or None,
    }
    writer = store.begin_video(
        source.video_id, height=height, width=width, channels=spec.channels,
        chunk_frames=prep.chunk_frames, attrs=attrs,
    )
    try:
        prev_hist: np.ndarray | None = None
        # A `with` block: when the writer raises, FFmpeg is stopped here, not whenever the
        # generator is collected (a traceback keeps it alive, FFmpeg blocked on a full pipe).
        with read_frames(
            source.uri, spec, batch_frames=batch_frames(prep.chunk_frames, spec.frame_bytes), frame_files=frames,
            time_limit=decode_time_limit(duration=duration, size=source_size(source)), expected_frames=expected,
            reuse_buffers=True,  # each batch is stored (compressed and written) before the next is read
        ) as batches:
            for batch in batches:
                cuts, prev_hist = scene_cut_flags(batch, prev_hist)
                writer.append(batch, cuts)
        labels = source.frame_labels(writer.n_frames)
        writer.finish(labels, {
            **timing_attrs(batches.times, info.start),
            **label_attrs(labels),
            "ffmpeg_warnings": batches.warnings,
            "ingested_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
    except BaseException:
        writer.abort()
        raise
    return IngestResult(source.video_id, source.split, "ingested", writer.n_frames, time.perf_counter() - t0)


def label_attrs(labels: np.ndarray) -> dict[str, Any]:
    return {"labels_known": bool((labels >= 0).all()), "anomalous_frames": int((labels == 1).sum())}


def refresh_labels(store: ClipStore, source: VideoSource, uri: str) -> str | None:
    """Bring a complete video group's labels, split and source path up to date with `source` in
    place (its frames stay); a one-line note when labels or split changed, else None."""
    stored = store.video(source.video_id)
    labels = source.frame_labels(stored.n_frames)
    changed = []
    if stored.split != source.split:
        changed.append(f"split {stored.split} -> {source.split}")
    if not np.array_equal(stored.labels, labels):
        changed.append(f"labels of {int((stored.labels != labels).sum())} frames")
    attrs = {"split": source.split, "source_uri": uri, "source_relpath": source.relative, **label_attrs(labels)}
    if changed or any(stored.attrs.get(k) != v for k, v in attrs.items()):
        store.update_video(source.video_id, labels=labels, attrs=attrs)
    if not changed:
        return None
    return f"video {source.video_id!r}: {', '.join(changed)} changed since it was ingested; updated in place (frames kept)"


def require_training_footage(videos: list[VideoSource], source: str, *, store_url: str) -> None:
    """Refuse, in one line that says the expected layout, a dataset with no training (normal) video
    listed at `source` nor stored in the store at `store_url`: a model cannot be trained on it."""
    if any(v.split == "train" for v in videos):
        return
    try:
        if ClipStore.open(store_url).video_ids(split="train"):
            return
    except NotFoundError:
        pass
    raise DatasetLayoutError(f"{source}: no training footage; {FOLDER_LAYOUT}")


def source_size(source: VideoSource) -> int:
    """Bytes of the source (of all its frame files for a frame folder)."""
    return sum(Path(p).stat().st_size for p in source.files)


def timing_attrs(times: FrameTimes | None, start: float) -> dict[str, Any]:
    """Where the stored frames sit on the source's clock: `start_time`, the first frame's time in
    seconds (the file's start when FFmpeg gave no timestamps), and `frame_times`, the steps between
    consecutive frames as runs `[[ticks, count], ...]` of `time_base` seconds (None when not known
    or when the step changes more than `MAX_TIME_RUNS` times). `frame_times(attrs)` expands them."""
    if times is None:
        return {"start_time": round(start, 6), "frame_times": None}
    first = start + float(times.pts[0] * times.time_base)
    steps = np.diff(times.pts)
    edges = np.flatnonzero(np.diff(steps)) + 1  # where a run of equal steps ends
    bounds = np.concatenate([[0], edges, [len(steps)]]).astype(int)
    runs = [[int(steps[a]), int(b - a)] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    coded = {"time_base": str(times.time_base), "steps": runs} if len(runs) <= MAX_TIME_RUNS else None
    return {"start_time": round(first, 6), "frame_times": coded}


def frame_times(attrs: dict[str, Any]) -> np.ndarray | None:
    """(N,) time of each stored frame in seconds on the source's clock, from a video's attributes;
    None when the ingest could not record them."""
    coded = attrs.get("frame_times")
    if not coded:
        return None
    steps = np.repeat([s for s, _ in coded["steps"]], [n for _, n in coded["steps"]]).astype(np.int64)
    ticks = np.concatenate([[0], np.cumsum(steps)])
    base = Fraction(coded["time_base"])
    return attrs["start_time"] + ticks * (base.numerator / base.denominator)


def scene_cut_flags(frames: np.ndarray, prev_hist: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Scene-cut flags of (n, H, W, C) frames, given the previous batch's last histogram.

    Frame i is a cut when the Pearson correlation of its colour histogram (32 bins per channel) with
    frame i-1's falls below 0.5; the first frame of a video never is. The histogram is taken over a
    grid of about 5,400 pixels (every `step`-th pixel in each direction, `step` from the frame size:
    4 at 240x320 and 240x360, 9 at 480x852): plenty for 32 bins, at a cost that does not grow with
    the frame.
    Returns the flags and the last frame's histogram to carry into the next batch.
    """
    n, height, width, channels = frames.shape
    bins = _HIST_BINS * channels
    step = max(1, round(math.sqrt(height * width / HIST_PIXELS)))
    # One bincount for the whole batch: bin index = frame * bins + channel * 32 + level // 8.
    index = frames[:, ::step, ::step, :] >> 3
    index = index.astype(np.int32)
    index += (np.arange(channels, dtype=np.int32) * _HIST_BINS)[None, None, None, :]
    index += (np.arange(n, dtype=np.int32) * bins)[:, None, None, None]
    hists = np.bincount(index.ravel(), minlength=n * bins).reshape(n, bins).astype(np.float64)
    previous = np.concatenate([prev_hist[None] if prev_hist is not None else hists[:1], hists[:-1]])
    flags = _correlation(previous, hists) < SCENE_CUT_THRESHOLD
    if prev_hist is None:
        flags[0] = False
    return flags, hists[-1]


def _correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation; two flat histograms correlate 1 if equal, else 0."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    num = (a * b).sum(axis=1)
    flat = denom == 0
    out = np.divide(num, denom, out=np.zeros_like(num), where=~flat)
    out[flat] = np.where(np.all(a[flat] == b[flat], axis=1), 1.0, 0.0)
    return out


def describe_failure(exc: BaseException) -> str:
    """One line for a batch summary: the message of an expected error, else its type and message."""
    text = " ".join(line.strip() for line in str(exc).splitlines())
    return text if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {text}"
