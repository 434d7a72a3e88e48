"""Validation sets made from normal footage only: held-out normal footage with synthetic anomalies at
known frames, for choosing model variants, thresholds and defaults per camera without test labels.

`make_validation_set(store_url, out_dir)` reads the train split of an ingested clip store, holds out
part of the normal footage (seeded) and writes a dataset in the generic folder layout
(`vad.tasks.sources.datasets.folder`); `ingest_validation_set` stores it at the source's frame rate:

    out_dir/train/<video>/000000.png ...      the normal footage a model is fitted on
    out_dir/test/<piece>-<i>-<kind>/...       a copy of a held-out piece with one synthetic anomaly
    out_dir/labels.csv                        video,frame,label for every test frame
    out_dir/validation.json                   the record (`ValidationSet`), written last

What is held out. With at least `MIN_VIDEOS` normal videos, whole videos (a quarter of them by
default, at most `MAX_PIECES`); with fewer (one long recording is the common case for a new camera),
segments of `SEGMENT_S` seconds cut from the ends of the longest videos, each a test piece of its own,
the rest of each video staying in the fit part. Less than `MIN_FOOTAGE_S` seconds of normal footage
is one `ParameterError`. The fit part is capped at `MAX_FIT_S` seconds (the footage nearest the
held-out pieces), so hours of footage do not become hours of PNG files.

Frames are PNG (lossless) at the stored size, gray or RGB as stored: a normal frame of a test video is
byte for byte its source frame and only the anomaly differs.

Why these anomalies (generator version 2). Version 1 found objects with a median background,
a threshold and connected components, the very detector of the large model `objects`, and so
flattered it. Version 2 uses no background model and no object detector: regions are chosen where
the held-out footage itself moves (frame differences and per-pixel temporal spread,
`validation_scene.py`), and every anomaly is made of that footage:

    local_speed  a window where things move, replayed 2-3x faster while the rest of the frame keeps its
                 pace: someone running, a cyclist or skater among walkers (Ped1/Ped2, Avenue, ShanghaiTech).
    reverse      a window where things move, played backwards: movement against the usual direction
                 (Avenue's wrong-way walking; a one-way corridor or escalator). Where people walk both
                 ways it is subtle, on purpose: not every anomaly is easy.
    scale_up     what moves in a window (its shape from three-frame differencing, not a background)
                 drawn 1.5-2x larger about its own centre: an object bigger than what normally goes
                 there, a cart or vehicle on a walkway, somebody too large for that place in the view.
    freeze       a window where things move, frozen on one frame while its surroundings go on: someone
                 stopping dead or lying still, an object left behind.
    paste        what moves in one window copied into another part of the motion area at another time:
                 an extra mover at a place, and at a size, that place does not see (perspective).
    frame_speed  the whole frame 2-3x faster over a segment (easy for any motion model; kept for breadth).

The parameters (durations of 2-4 s, speed x2-3, size x1.5-2, windows of 0.2-0.35 of the frame
height) come from what those real anomalies look like, not from any test score. Windows have a
raised-cosine edge (`FEATHER_FRAC` of the side) and pastes the soft shape of what moves, and every
region fades in and out over `FADE_S`, so neither the seam nor a jump alone gives an anomaly away.
Everything is drawn from `numpy` generators seeded by (seed, piece, slot): the same store and seed
give the same bytes.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from vad.storage import ClipStore
from vad.tasks.evaluation.validation_anomalies import GENERATORS, KINDS
from vad.tasks.evaluation.validation_scene import Piece
from vad.tasks.sources.datasets._base import video_id_for

from vad.errors import ParameterError

__all__ = [
    "GENERATOR_VERSION", "KINDS", "LABELS_NAME", "RECORD_NAME", "SyntheticAnomaly", "ValidationSet", "ValidationVideo",
    "ingest_validation_set", "make_validation_set",
]

RECORD_NAME = "validation.json"
LABELS_NAME = "labels.csv"
GENERATOR_VERSION = 2

MIN_VIDEOS = 4  # fewer normal videos than this: hold out segments instead of whole videos
HOLD_FRACTION = 0.25  # of the normal videos (or footage) held out by default
MAX_PIECES = 12  # held-out pieces by default, at most (each gives `per_video` test videos)
SEGMENT_S = 10.0  # a held-out segment: room for a 2-4 s anomaly with normal footage around it
MIN_SEGMENT_FRAMES = 48
MIN_FOOTAGE_S = 3 * SEGMENT_S  # one segment held out and twice as much to fit on
MIN_PIECE_S = 5.0  # whole videos shorter than this are held out only when too few are longer
MAX_PIECE_S = 60.0  # a held-out whole video longer than this gives its last MAX_PIECE_S seconds
MAX_FIT_S = 600.0  # the fit part, at most
WRITE_THREADS = min(4, os.cpu_count() or 1)
DEFAULT_FPS = 10.0  # for durations where the store records no frame rate (frame folders): the models' default too


@dataclass(frozen=True)
class SyntheticAnomaly:
    """One synthetic anomaly: its kind, its frames [start, stop) in the test video, its parameters."""

    kind: str
    start: int
    stop: int
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ValidationVideo:
    """A test video of the validation set: a copy of a held-out piece of normal video `source` with one anomaly.

    `source_frames` maps its frames to the source video's (absolute frame numbers) as runs [first
    output frame, first source frame, count, step]: one run for every kind but `frame_speed`,
    which skips source frames.
    """

    video_id: str
    source: str
    frames: int
    anomaly: SyntheticAnomaly
    source_frames: tuple[tuple[int, int, int, int], ...]

    def source_index(self) -> np.ndarray:
        """(frames,) int64: the source frame each frame of this video comes from."""
        out = np.empty(self.frames, dtype=np.int64)
        for first, src, count, step in self.source_frames:
            out[first : first + count] = src + step * np.arange(count)
        return out

    def labels(self) -> np.ndarray:
        """(frames,) int8: 1 inside the anomaly, 0 elsewhere."""
        out = np.zeros(self.frames, dtype=np.int8)
        out[self.anomaly.start : self.anomaly.stop] = 1
        return out


@dataclass(frozen=True)
class ValidationSet:
    """What `make_validation_set` wrote: the fit part, the held-out pieces, every synthetic anomaly.

    `mode` is "videos" (whole videos held out) or "segments" (pieces cut from the ends of videos);
    `fit_frames` and `held_out_frames` give each part as (video, start, stop) of the source video.
    """

    out_dir: str
    store_url: str
    dataset: str
    seed: int
    per_video: int
    fit_videos: tuple[str, ...]
    held_out: tuple[str, ...]
    videos: tuple[ValidationVideo, ...]
    frame_size: tuple[int, int, int]  # (H, W, C) as stored
    generator_version: int = GENERATOR_VERSION
    fps: float | None = None
    mode: str = "videos"
    fit_frames: tuple[tuple[str, int, int], ...] = ()
    held_out_frames: tuple[tuple[str, int, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The record as written to `validation.json` (no output path, no times: the same store and
        seed give the same bytes wherever the set is written)."""
        out = asdict(self)
        del out["out_dir"]
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> ValidationSet:
        """Read the record of a validation set written by `make_validation_set` (any version)."""
        data = json.loads((Path(out_dir) / RECORD_NAME).read_text())
        videos = tuple(
            ValidationVideo(
                v["video_id"], v["source"], v["frames"], SyntheticAnomaly(**v["anomaly"]),
                tuple(tuple(r) for r in v["source_frames"]),  # type: ignore[misc]
            )
            for v in data.pop("videos")
        )
        tuples = {k: tuple(tuple(r) for r in data.pop(k, ())) for k in ("fit_frames", "held_out_frames")}
        return cls(
            out_dir=str(out_dir), videos=videos, fit_videos=tuple(data.pop("fit_videos")),
            held_out=tuple(data.pop("held_out")), frame_size=tuple(data.pop("frame_size")), **tuples, **data,  # type: ignore[arg-type]
        )


def make_validation_set(
    store_url: str, out_dir: str | Path, *, held_out: int | list[str] | None = None, per_video: int = 2, seed: int = 0,
) -> ValidationSet:
    """Write a validation set from the normal (train) footage of the store at `store_url` into the new
    or empty folder `out_dir`, and return its record (also written as `out_dir/validation.json`).

    `held_out`: None (a quarter of the normal videos, or of the footage in segments when the store has
    fewer than `MIN_VIDEOS` videos; at most `MAX_PIECES`), a count of pieces (whole videos drawn by
    `seed` when fewer than the store's normal videos, else segments), or the ids of videos to hold out.
    Each held-out piece gives `per_video` test videos, each a copy of it with one synthetic anomaly;
    the kinds cycle through `KINDS` in a seeded order. A kind a piece cannot give (nothing moves in
    it) is replaced by the next kind in that order. The folder is written under a temporary name
    beside `out_dir` and renamed when complete.
    """
    out = Path(out_dir)
    if isinstance(per_video, bool) or not isinstance(per_video, int) or per_video < 1:
        raise ParameterError(f"per_video must be a positive integer, got {per_video!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ParameterError(f"{out}: out_dir is not an empty folder; choose a new folder for the validation set")
    store = ClipStore.open(store_url)
    normal = {v: store.video(v) for v in store.video_ids(split="train")}
    mode, fit, pieces = _plan(store_url, {v: (x.n_frames, _fps(x)) for v, x in normal.items()}, held_out, seed)
    order = [KINDS[i] for i in np.random.default_rng([seed, 1]).permutation(len(KINDS))]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        first = next(iter(normal.values()))
        size = tuple(int(v) for v in first.frames.shape[1:])
        for vid, start, stop in fit:
            folder = tmp / "train" / vid
            folder.mkdir(parents=True)
            for a in range(start, stop, 256):  # bounded memory for long footage
                _write_frames(folder, normal[vid].read(a, min(stop, a + 256)), first_index=a - start)
        made: list[ValidationVideo] = []
        slot = 0
        for vid, start, stop in pieces:
            piece = Piece(normal[vid].read(start, stop), _fps(normal[vid]))
            name = vid if mode == "videos" else f"{vid}-f{start}"
            for i in range(per_video):
                video, new_frames = _make_one(piece, vid, name, start, i, order, slot, seed)
                folder = tmp / "test" / video.video_id
                folder.mkdir(parents=True)
                _write_frames(folder, new_frames)
                made.append(video)
                slot += 1
        _write_labels(tmp / LABELS_NAME, made)
        record = ValidationSet(
            out_dir=str(out), store_url=str(store_url), dataset=store.dataset, seed=seed, per_video=per_video,
            fit_videos=tuple(dict.fromkeys(v for v, _, _ in fit)), held_out=tuple(dict.fromkeys(v for v, _, _ in pieces)),
            videos=tuple(made), frame_size=size, fps=first.attrs.get("fps"), mode=mode,  # type: ignore[arg-type]
            fit_frames=tuple(fit), held_out_frames=tuple(pieces),
        )
        (tmp / RECORD_NAME).write_text(json.dumps(record.to_json(), indent=1) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above); a file put there meanwhile makes this fail loudly
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def ingest_validation_set(out_dir: str | Path, store_url: str, *, dataset: str | None = None) -> list[str]:
    """Ingest the validation set at `out_dir` into the store at `store_url` (as stored: gray stays
    gray), with each video's `fps` set to the source store's (a frame folder carries no frame rate,
    and the models' settings in seconds need it). Returns the video ids."""
    from vad.tasks.sources.datasets import discover
    from vad.tasks.sources.ingest import Preprocess, ingest_video

    record = ValidationSet.load(out_dir)
    name = dataset or f"{record.dataset}-val"
    prep = Preprocess(gray=record.frame_size[2] == 1)
    ids = []
    for source in discover(str(out_dir), "folder"):
        ingest_video(store_url, source, prep, dataset=name)
        ids.append(source.video_id)
    store = ClipStore.open(store_url, writable=True)
    if record.fps:
        for vid in ids:
            video = store.video(vid)
            if video.attrs.get("fps") != record.fps:
                store.update_video(vid, labels=video.labels, attrs={"fps": record.fps})
    return ids


def _fps(video: Any) -> float:
    return float(video.attrs.get("fps") or DEFAULT_FPS)


def _plan(
    store_url: str, normal: dict[str, tuple[int, float]], held_out: int | list[str] | None, seed: int,
) -> tuple[str, list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    """The mode, the fit part and the held-out pieces, each part as (video, start, stop)."""
    if not normal:
        raise ParameterError(f"{store_url}: the store has no normal (train split) videos to make a validation set from")
    if isinstance(held_out, (bool, str)) or not (held_out is None or isinstance(held_out, (int, list, tuple))):
        raise ParameterError(f"held_out must be None, a count or a list of video ids, got {held_out!r}")
    ids = list(normal)
    seconds = sum(n / fps for n, fps in normal.values())
    frames = sum(n for n, _ in normal.values())
    if seconds < MIN_FOOTAGE_S:
        raise ParameterError(
            f"{store_url}: {seconds:.1f} s of normal footage ({frames} frames in {len(ids)} train videos) is too little "
            f"for a validation set: it needs at least {MIN_FOOTAGE_S:.0f} s (a {SEGMENT_S:.0f} s piece held out with "
            "synthetic anomalies and twice as much to fit on)"
        )
    if isinstance(held_out, (list, tuple)):
        chosen = _named(ids, list(held_out))
    elif held_out is None and len(ids) >= MIN_VIDEOS:
        chosen = _drawn(normal, min(MAX_PIECES, max(1, round(HOLD_FRACTION * len(ids)))), seed)
    elif isinstance(held_out, int) and 1 <= held_out < len(ids):
        chosen = _drawn(normal, held_out, seed)
    else:
        if isinstance(held_out, int) and held_out < 1:
            raise ParameterError(f"held_out={held_out}: must be at least 1")
        return ("segments", *_segments(store_url, normal, held_out, seconds))
    pieces = [(v, max(0, normal[v][0] - round(MAX_PIECE_S * normal[v][1])), normal[v][0]) for v in chosen]
    return "videos", _cap_fit([(v, 0, normal[v][0], normal[v][1]) for v in ids if v not in set(chosen)]), pieces


def _named(ids: list[str], named: list[str]) -> list[str]:
    unknown = sorted(set(named) - set(ids))
    if unknown:
        raise ParameterError(f"held_out names videos that are not normal (train) videos of the store: {unknown[:5]}")
    if len(set(named)) != len(named) or not named:
        raise ParameterError(f"held_out must name distinct videos, at least one: {named}")
    if len(named) >= len(ids):
        raise ParameterError(f"held_out names all {len(ids)} normal videos; at least one must stay to fit on")
    return [v for v in ids if v in set(named)]


def _drawn(normal: dict[str, tuple[int, float]], count: int, seed: int) -> list[str]:
    """`count` videos drawn by `seed`, among those of at least `MIN_PIECE_S` when there are enough
    (a 2-4 s anomaly in a 2 s video leaves no normal footage around it)."""
    ids = [v for v, (n, fps) in normal.items() if n / fps >= MIN_PIECE_S]
    ids = ids if len(ids) >= count else list(normal)
    picked = np.random.default_rng([seed, 0]).choice(len(ids), size=count, replace=False)
    return sorted(ids[int(i)] for i in picked)


def _segments(store_url: str, normal: dict[str, tuple[int, float]], count: int | None, seconds: float):
    """Segments of `SEGMENT_S` cut from the ends of the longest videos (each keeps at least one
    segment's length to fit on); the fit part is what is left of each video."""
    seg = {v: max(MIN_SEGMENT_FRAMES, round(SEGMENT_S * fps)) for v, (_, fps) in normal.items()}
    want = count if count is not None else min(MAX_PIECES, max(1, int(HOLD_FRACTION * seconds / SEGMENT_S)))
    left = {v: n for v, (n, _) in normal.items()}
    pieces: list[tuple[str, int, int]] = []
    held = 0.0
    while len(pieces) < want:
        vid = max(left, key=lambda v: (left[v] / normal[v][1], -list(normal).index(v)))  # the longest, first in order
        n, fps = left[vid], normal[vid][1]
        if n < 2 * seg[vid] or (held + seg[vid] / fps) * 3 > seconds + 1e-9:
            break
        pieces.append((vid, n - seg[vid], n))
        left[vid] = n - seg[vid]
        held += seg[vid] / fps
    if len(pieces) < want:
        raise ParameterError(
            f"{store_url}: held_out={want}: the normal footage ({seconds:.1f} s) gives {len(pieces)} segments of "
            f"{SEGMENT_S:.0f} s; each needs {3 * SEGMENT_S:.0f} s of footage (the segment and twice as much to fit on), "
            "and no video may give more than all but one segment of its length"
        )
    pieces.sort(key=lambda p: (list(normal).index(p[0]), p[1]))
    return _cap_fit([(v, 0, n, normal[v][1]) for v, n in left.items()]), pieces


def _cap_fit(parts: list[tuple[str, int, int, float]]) -> list[tuple[str, int, int]]:
    """The fit part capped at `MAX_FIT_S` seconds: each video keeps its last frames, in proportion."""
    total = sum((stop - start) / fps for _, start, stop, fps in parts)
    keep = min(1.0, MAX_FIT_S / total) if total else 1.0
    return [(v, stop - max(1, int((stop - start) * keep)), stop) for v, start, stop, _ in parts]


def _make_one(
    piece: Piece, source: str, name: str, offset: int, index: int, order: list[str], slot: int, seed: int,
) -> tuple[ValidationVideo, np.ndarray]:
    """Test video `index` of a held-out piece (frames from `offset` of video `source`): its kind is
    `order[slot % len(order)]`, or the next one the piece can give."""
    for step in range(len(order)):
        kind = order[(slot + step) % len(order)]
        rng = np.random.default_rng([seed, zlib.crc32(name.encode()), index, KINDS.index(kind)])
        made = GENERATORS[kind](piece, rng)
        if made is None:
            continue
        frames, src, start, stop, params = made
        video_id = f"{name}-{index}-{kind}"
        if video_id_for(video_id) != video_id:
            raise ParameterError(f"video id {source!r} does not survive as a folder name ({video_id!r})")
        video = ValidationVideo(video_id, source, len(frames), SyntheticAnomaly(kind, start, stop, params),
                                _runs(np.asarray(src) + offset))
        return video, frames
    raise ParameterError(
        f"held-out video {source!r} (frames {offset}-{offset + piece.n}) gives no synthetic anomaly: nothing moves "
        "in it, or it is too short; hold out other videos"
    )


def _runs(src: np.ndarray) -> tuple[tuple[int, int, int, int], ...]:
    """[first output frame, first source frame, count, step] runs of a source index."""
    runs: list[list[int]] = []
    for i, s in enumerate(int(v) for v in src):
        if runs:
            first, start, count, step = runs[-1]
            if count == 1 and s > start:
                runs[-1] = [first, start, 2, s - start]
                continue
            if s == start + step * count:
                runs[-1][2] += 1
                continue
        runs.append([i, s, 1, 1])
    return tuple(tuple(r) for r in runs)  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# Writing


def _write_frames(folder: Path, frames: np.ndarray, first_index: int = 0) -> None:
    """(N, H, W, C) uint8 frames as PNG files 000000.png ... from `first_index` into the existing
    `folder` (lossless; gray stays one channel)."""
    def write(i: int) -> None:
        frame = frames[i - first_index]
        image = frame[..., 0] if frame.shape[-1] == 1 else cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)
        # PNG level 1 (OpenCV's default is 3): on Ped2 frames 2.0 ms a frame against 3.0 (9.6 at
        # level 6) for files 4% larger (8% against level 6), measured
        if not cv2.imwrite(str(folder / f"{i:06d}.png"), image, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise OSError(f"{folder}: could not write frame {i}")

    # OpenCV encodes without the GIL: threads give the cores' speed-up, and each file's bytes are the same
    with ThreadPoolExecutor(max_workers=WRITE_THREADS) as pool:
        list(pool.map(write, range(first_index, first_index + len(frames))))


def _write_labels(path: Path, videos: list[ValidationVideo]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["video", "frame", "label"])
        for video in videos:
            writer.writerows((video.video_id, f, int(v)) for f, v in enumerate(video.labels()))
