"""Validation sets made from normal footage only: held-out normal videos with synthetic anomalies at
known frames, for choosing features, thresholds and default models without looking at test labels.

`make_validation_set(store_url, out_dir)` reads the train split of an ingested clip store, holds out
a few normal videos (seeded), and writes a dataset in the generic folder layout (`vad.tasks.sources.datasets.folder`):

    out_dir/train/<video>/000000.png ...     the other normal videos (what a model is fitted on)
    out_dir/test/<video>-<i>-<kind>/...      a copy of a held-out video with one synthetic anomaly
    out_dir/labels.csv                       video,frame,label for every test frame
    out_dir/validation.json                  the record (`ValidationSet`), written last

Frames are PNG (lossless) at the stored size, gray or RGB as stored, so a normal frame of a test
video is byte for byte its source frame and only the anomaly differs.

Why these anomalies. Earlier generators (speed-ups of the whole frame, boxes pasted anywhere) made
anomalies far easier than the real ones and ranked model variants differently from the real test
set: a speed-up scores ~1.0 for any motion model, and a patch moving where the footage is calm is
found by any detector. Real anomalies (cyclists, carts) move along the walkways among the people.
So three of the four kinds re-use real objects of the held-out video, found with a background model
(median of the video, threshold, connected components, tracks linked by box overlap), and every
anomaly lies where normal objects go (the video's foreground-frequency map):

    object_speed    a real moving object replayed 2-3x faster along its own path: the object of
                    source frames t+k, t+2k, ... (with its mask) pasted over frames t+1, t+2, ...,
                    beside the object itself, which keeps its normal pace (someone overtaking).
    foreign_object  a real object cut with its mask, scaled 1.5-2.5x the size a normal object has at
                    that place (a "vehicle-sized" thing), moving in the walking direction of a real
                    track at 1-2x the walkers' median speed, over walkway only.
    frame_speed     the whole video played 2x or 3x faster over a segment (easy; kept for breadth).
    static_paste    a real object turned on its side, unmoving, lying on the walkway (appearance only).

Segments are 30-60 output frames (shorter only when the footage allows no more), with normal
frames before and after; pastes are feathered (the object's mask less a pixel, a Gaussian edge),
and a moving copy fades out over its last frames rather than vanishing. Everything is drawn from
`numpy` generators seeded by (seed, video, slot): the same store and seed give the same bytes.

This module holds the record and writes the set; the scene analysis (background model, objects,
tracks, walk area) is `validation_scene.py`, the anomaly makers `validation_anomalies.py`.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from vad.storage import ClipStore
from vad.tasks.evaluation.validation_anomalies import GENERATORS, KINDS
from vad.tasks.evaluation.validation_scene import Scene, analyse
from vad.tasks.sources.datasets._base import video_id_for

from vad.errors import ParameterError

__all__ = [
    "GENERATOR_VERSION", "KINDS", "LABELS_NAME", "RECORD_NAME", "SyntheticAnomaly", "ValidationSet", "ValidationVideo",
    "make_validation_set",
]

RECORD_NAME = "validation.json"
LABELS_NAME = "labels.csv"
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SyntheticAnomaly:
    """One synthetic anomaly: its kind, its frames [start, stop) in the test video, its parameters."""

    kind: str
    start: int
    stop: int
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ValidationVideo:
    """A test video of the validation set: a copy of held-out video `source` with one anomaly.

    `source_frames` maps its frames to the source's as runs [first output frame, first source
    frame, count, step]: identity for every kind but `frame_speed`, which skips source frames.
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
    """What `make_validation_set` wrote: which videos were held out, and every synthetic anomaly."""

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

    def to_json(self) -> dict[str, Any]:
        """The record as written to `validation.json` (no output path, no times: the same store and
        seed give the same bytes wherever the set is written)."""
        out = asdict(self)
        del out["out_dir"]
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> ValidationSet:
        """Read the record of a validation set written by `make_validation_set`."""
        data = json.loads((Path(out_dir) / RECORD_NAME).read_text())
        videos = tuple(
            ValidationVideo(
                v["video_id"], v["source"], v["frames"], SyntheticAnomaly(**v["anomaly"]),
                tuple(tuple(r) for r in v["source_frames"]),  # type: ignore[misc]
            )
            for v in data.pop("videos")
        )
        return cls(
            out_dir=str(out_dir), videos=videos, fit_videos=tuple(data.pop("fit_videos")),
            held_out=tuple(data.pop("held_out")), frame_size=tuple(data.pop("frame_size")), **data,  # type: ignore[arg-type]
        )


def make_validation_set(
    store_url: str, out_dir: str | Path, *, held_out: int | list[str] = 4, per_video: int = 2, seed: int = 0,
) -> ValidationSet:
    """Write a validation set from the normal (train) videos of the store at `store_url` into the new
    or empty folder `out_dir`, and return its record (also written as `out_dir/validation.json`).

    `held_out`: how many normal videos to hold out (picked by `seed`), or their ids. Each held-out
    video gives `per_video` test videos, each a copy of it with one synthetic anomaly; the kinds
    cycle through `KINDS` in a seeded order, so four held-out videos x 2 give every kind twice. A
    kind a video cannot give (no moving object found) is replaced by the next kind in that order.
    The folder is written under a temporary name beside `out_dir` and renamed when complete.
    """
    out = Path(out_dir)
    if isinstance(per_video, bool) or not isinstance(per_video, int) or per_video < 1:
        raise ParameterError(f"per_video must be a positive integer, got {per_video!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ParameterError(f"seed must be a non-negative integer, got {seed!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ParameterError(f"{out}: out_dir is not an empty folder; choose a new folder for the validation set")
    store = ClipStore.open(store_url)
    normal = store.video_ids(split="train")
    chosen = _pick_held_out(normal, held_out, seed)
    fit = [v for v in normal if v not in chosen]
    order = [KINDS[i] for i in np.random.default_rng([seed, 1]).permutation(len(KINDS))]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        size: tuple[int, int, int] | None = None
        for vid in fit:
            frames = _read_all(store, vid)
            size = size or tuple(frames.shape[1:])  # type: ignore[assignment]
            _write_frames(tmp / "train" / vid, frames)
        made: list[ValidationVideo] = []
        slot = 0
        for vid in chosen:
            frames = _read_all(store, vid)
            size = size or tuple(frames.shape[1:])  # type: ignore[assignment]
            scene = analyse(frames)
            for i in range(per_video):
                video, new_frames = _make_one(scene, vid, i, order, slot, seed)
                _write_frames(tmp / "test" / video.video_id, new_frames)
                made.append(video)
                slot += 1
        _write_labels(tmp / LABELS_NAME, made)
        record = ValidationSet(
            out_dir=str(out), store_url=str(store_url), dataset=store.dataset, seed=seed, per_video=per_video,
            fit_videos=tuple(fit), held_out=tuple(chosen), videos=tuple(made), frame_size=size,  # type: ignore[arg-type]
        )
        (tmp / RECORD_NAME).write_text(json.dumps(record.to_json(), indent=1) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above); a file put there meanwhile makes this fail loudly
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def _pick_held_out(normal: list[str], held_out: int | list[str], seed: int) -> list[str]:
    """The held-out video ids, in store order: `held_out` of them drawn by `seed`, or those named."""
    if not normal:
        raise ParameterError("the store has no normal (train split) videos to make a validation set from")
    if isinstance(held_out, (bool, str)):
        raise ParameterError(f"held_out must be a count or a list of video ids, got {held_out!r}")
    if isinstance(held_out, int):
        if not 1 <= held_out < len(normal):
            raise ParameterError(
                f"held_out={held_out}: must be between 1 and {len(normal) - 1} (the store has {len(normal)} normal "
                "videos, and at least one must stay to fit on)"
            )
        picked = np.random.default_rng([seed, 0]).choice(len(normal), size=held_out, replace=False)
        return [normal[i] for i in sorted(int(i) for i in picked)]
    ids = list(held_out)
    unknown = sorted(set(ids) - set(normal))
    if unknown:
        raise ParameterError(f"held_out names videos that are not normal (train) videos of the store: {unknown[:5]}")
    if len(set(ids)) != len(ids) or not ids:
        raise ParameterError(f"held_out must name distinct videos, at least one: {ids}")
    if len(ids) >= len(normal):
        raise ParameterError(f"held_out names all {len(normal)} normal videos; at least one must stay to fit on")
    return [v for v in normal if v in set(ids)]


def _read_all(store: ClipStore, video_id: str) -> np.ndarray:
    video = store.video(video_id)
    return video.read(0, video.n_frames)


def _make_one(
    scene: Scene, source: str, index: int, order: list[str], slot: int, seed: int,
) -> tuple[ValidationVideo, np.ndarray]:
    """Test video `index` of held-out video `source`: its kind is `order[slot % 4]`, or the next one
    the video can give."""
    for step in range(len(order)):
        kind = order[(slot + step) % len(order)]
        rng = np.random.default_rng([seed, zlib.crc32(source.encode()), index, KINDS.index(kind)])
        made = GENERATORS[kind](scene, rng)
        if made is None:
            continue
        frames, src, start, stop, params = made
        video_id = f"{source}-{index}-{kind}"
        if video_id_for(video_id) != video_id:
            raise ParameterError(f"video id {source!r} does not survive as a folder name ({video_id!r})")
        video = ValidationVideo(video_id, source, len(frames), SyntheticAnomaly(kind, start, stop, params), _runs(src))
        return video, frames
    raise ParameterError(
        f"held-out video {source!r} ({len(scene.frames)} frames) is too short for any synthetic anomaly; "
        "hold out other videos"
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


def _write_frames(folder: Path, frames: np.ndarray) -> None:
    """(N, H, W, C) uint8 frames as PNG files 000000.png ... (lossless; gray stays one channel)."""
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        image = frame[..., 0] if frame.shape[-1] == 1 else cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)
        # PNG level 1 (OpenCV's default is 3): on Ped2 frames 2.0 ms a frame against 3.0 (9.6 at
        # level 6) for files 4% larger (8% against level 6), measured
        if not cv2.imwrite(str(folder / f"{i:06d}.png"), image, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise OSError(f"{folder}: could not write frame {i}")


def _write_labels(path: Path, videos: list[ValidationVideo]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["video", "frame", "label"])
        for video in videos:
            writer.writerows((video.video_id, f, int(v)) for f, v in enumerate(video.labels()))
