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
from vad.tasks.sources.datasets._base import video_id_for

from vad.errors import ParameterError

KINDS = ("object_speed", "foreign_object", "frame_speed", "static_paste")
RECORD_NAME = "validation.json"
LABELS_NAME = "labels.csv"
GENERATOR_VERSION = 1

# Segment lengths, in output frames: long enough for clip models (16-frame clips) to see the
# anomaly in whole clips, short enough that a video keeps normal frames around it.
SEGMENT_FRAMES = (30, 60)
MIN_SEGMENT_FRAMES = 8  # the shortest accepted when a video (or a track in it) allows no longer
EDGE_FRAMES = 10  # normal frames kept at each end of a test video (fewer in very short videos)
SPEED_FACTORS = (2, 3)  # whole-frame steps: motion stays smooth (2.5x would alternate steps of 2 and 3)
FOREIGN_SCALE = (1.5, 2.5)  # x the height of a normal object at that place
FOREIGN_SPEED = (1.0, 2.0)  # x the median speed of the video's long tracks (normal walkers)
STATIC_SCALE = (1.0, 1.5)
FADE_FRAMES = 4  # a moving copy fades out over its last frames instead of vanishing at once
FEATHER_SIGMA = 1.0  # px: the soft edge of a paste
PAD = 3  # px around an object's box, room for the feathered edge

# Background model. A pixel is foreground when its blurred value differs from the blurred median
# of the video by more than FG_THRESHOLD gray levels (or 5 robust noise sigmas, if the footage is
# noisier); Ped2's people differ from the pavement by 40-120 levels, its noise by ~2.
FG_THRESHOLD = 20.0
FG_NOISE_SIGMAS = 5.0
MIN_AREA_FRACTION = 0.0015  # of the frame: ~130 px at 240x360, a distant pedestrian
MIN_AREA_PX = 12
LINK_IOU = 0.2  # boxes of one object in consecutive frames overlap at least this much
LINK_AREA_RATIO = 2.0  # ... and change area by less than this factor (else it merged or split)
MIN_TRACK_FRAMES = 8
MOVING_SPEED = 0.3  # px/frame of net centroid motion: a track slower than this stands still
# The walk area: where the smoothed foreground frequency is at least this fraction of its 99th
# percentile. Pastes and paths are kept inside it.
WALK_FRACTION = 0.25
ROUTE_ATTEMPTS = 40
ROUTE_TRACK_FRAMES = 20


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
        """The record as written to `validation.json` (no paths or times: the same seed gives the
        same bytes wherever it is written)."""
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
            scene = _analyse(frames)
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


# ---------------------------------------------------------------------------------------------
# Scene analysis: background, foreground frequency, objects and their tracks


@dataclass
class _Detection:
    frame: int
    box: tuple[int, int, int, int]  # x, y, w, h of the object
    area: int
    crop: tuple[int, int, int, int]  # x, y, w, h: the box grown by PAD, inside the frame
    mask: np.ndarray  # bool (crop h, crop w): the object's pixels

    @property
    def centre(self) -> np.ndarray:
        x, y, w, h = self.box
        return np.array([x + w / 2, y + h / 2])

    @property
    def bottom(self) -> np.ndarray:
        """(x, y) of the middle of the box's lower edge: where the object stands."""
        x, y, w, h = self.box
        return np.array([x + w / 2, y + h])


@dataclass
class _Track:
    dets: list[_Detection]

    @property
    def start(self) -> int:
        return self.dets[0].frame

    @property
    def end(self) -> int:  # inclusive
        return self.dets[-1].frame

    @property
    def velocity(self) -> np.ndarray:
        """Net centroid motion in px/frame (x, y)."""
        return (self.dets[-1].centre - self.dets[0].centre) / max(1, self.end - self.start)

    def at(self, frame: int) -> _Detection:
        return self.dets[frame - self.start]


@dataclass
class _Scene:
    frames: np.ndarray  # (N, H, W, C) uint8
    walk: np.ndarray  # (H, W) float32: smoothed foreground frequency
    walk_mask: np.ndarray  # (H, W) bool
    tracks: list[_Track]  # moving tracks only
    objects: list[_Detection]  # whole single objects of moving tracks, to cut
    height_line: tuple[float, float]  # normal object height = a + b * y of its lower edge

    def height_at(self, y: float) -> float:
        a, b = self.height_line
        return max(4.0, a + b * y)

    def on_walk(self, x: float, y: float) -> bool:
        h, w = self.walk_mask.shape
        xi, yi = round(x), round(y)
        return 0 <= xi < w and 0 <= yi < h and bool(self.walk_mask[yi, xi])


def _gray(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N, H, W) uint8."""
    if frames.shape[-1] == 1:
        return frames[..., 0]
    return np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames])


def _analyse(frames: np.ndarray) -> _Scene:
    """The background model of one normal video: its objects, their tracks and the walk area."""
    gray = _gray(frames)
    n, h, w = gray.shape
    blurred = np.stack([cv2.GaussianBlur(g, (5, 5), 0) for g in gray]).astype(np.int16)
    background = np.median(blurred, axis=0).astype(np.int16)
    diff = np.abs(blurred - background)
    noise = 1.4826 * float(np.median(diff))  # robust sigma of the background's own variation
    threshold = max(FG_THRESHOLD, FG_NOISE_SIGMAS * noise)
    min_area = max(MIN_AREA_PX, int(MIN_AREA_FRACTION * h * w))
    open_k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    close_k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    frequency = np.zeros((h, w), np.float32)
    per_frame: list[list[_Detection]] = []
    for t in range(n):
        fg = (diff[t] > threshold).astype(np.uint8)
        fg = cv2.morphologyEx(cv2.morphologyEx(fg, cv2.MORPH_OPEN, open_k), cv2.MORPH_CLOSE, close_k)
        frequency += fg
        count, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        dets = []
        for i in range(1, count):
            x, y, bw, bh, area = (int(v) for v in stats[i])
            if area < min_area:
                continue
            cx, cy = max(0, x - PAD), max(0, y - PAD)
            cw, ch = min(w, x + bw + PAD) - cx, min(h, y + bh + PAD) - cy
            mask = labels[cy : cy + ch, cx : cx + cw] == i
            dets.append(_Detection(t, (x, y, bw, bh), area, (cx, cy, cw, ch), mask))
        per_frame.append(dets)
    tracks = [tr for tr in _link(per_frame) if len(tr.dets) >= MIN_TRACK_FRAMES
              and float(np.hypot(*tr.velocity)) >= MOVING_SPEED]
    frequency /= max(1, n)
    moving = [d for tr in tracks for d in tr.dets]
    width = float(np.median([d.box[2] for d in moving])) if moving else 8.0
    walk = cv2.GaussianBlur(frequency, (0, 0), max(2.0, width / 2))
    top = float(np.percentile(walk, 99))
    walk_mask = walk >= WALK_FRACTION * top if top > 0 else np.zeros_like(walk, bool)
    single = _single_objects(moving, h, w)
    line = _height_line(single or moving)
    scene = _Scene(frames, walk, walk_mask, tracks, [], line)
    scene.objects = _normal_shaped(single, scene)
    return scene


def _link(per_frame: list[list[_Detection]]) -> list[_Track]:
    """Tracks from detections: greedy one-to-one matching of consecutive frames by box overlap;
    a track ends where its object merges with another, splits, or is lost."""
    done: list[_Track] = []
    active: list[_Track] = []
    for dets in per_frame:
        pairs = []
        for i, tr in enumerate(active):
            last = tr.dets[-1]
            for j, d in enumerate(dets):
                ratio = max(d.area, last.area) / max(1, min(d.area, last.area))
                overlap = _iou(last.box, d.box)
                if overlap >= LINK_IOU and ratio < LINK_AREA_RATIO:
                    pairs.append((-overlap, i, j))
        used_t, used_d, nxt = set(), set(), []
        for _, i, j in sorted(pairs):
            if i in used_t or j in used_d:
                continue
            used_t.add(i)
            used_d.add(j)
            active[i].dets.append(dets[j])
            nxt.append(active[i])
        done += [tr for i, tr in enumerate(active) if i not in used_t]
        nxt += [_Track([d]) for j, d in enumerate(dets) if j not in used_d]
        active = sorted(nxt, key=lambda tr: (tr.start, tuple(tr.dets[0].box)))
    return sorted(done + active, key=lambda tr: (tr.start, tuple(tr.dets[0].box)))


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter)


def _single_objects(dets: list[_Detection], h: int, w: int) -> list[_Detection]:
    """Detections that look like one whole object: off the frame border, of about the usual area
    (not two people merged, not a fragment)."""
    if not dets:
        return []
    area = float(np.median([d.area for d in dets]))
    return [
        d for d in dets
        if d.box[0] > 0 and d.box[1] > 0 and d.box[0] + d.box[2] < w and d.box[1] + d.box[3] < h
        and 0.5 * area <= d.area <= 2.0 * area
    ]


def _normal_shaped(dets: list[_Detection], scene: _Scene) -> list[_Detection]:
    """Of whole single objects, those of the usual height for where they stand (within 30%) and
    of the usual aspect (within a factor 1.6): people, not a fragment or a bag."""
    if not dets:
        return []
    aspect = float(np.median([d.box[3] / d.box[2] for d in dets]))
    return [
        d for d in dets
        if abs(d.box[3] / scene.height_at(float(d.bottom[1])) - 1.0) <= 0.3
        and 1 / 1.6 <= (d.box[3] / d.box[2]) / aspect <= 1.6
    ]


def _height_line(dets: list[_Detection]) -> tuple[float, float]:
    """Perspective: the height of a normal object as a line in the y of its lower edge."""
    if not dets:
        return 8.0, 0.0
    heights = np.array([d.box[3] for d in dets], float)
    ys = np.array([d.bottom[1] for d in dets], float)
    if len(dets) >= 10 and np.ptp(ys) >= 4:
        b, a = np.polyfit(ys, heights, 1)
        if a + b * ys.min() > 0 and a + b * ys.max() > 0:
            return float(a), float(b)
    return float(np.median(heights)), 0.0


# ---------------------------------------------------------------------------------------------
# The anomalies. Each takes the scene and a generator and returns (frames, source index, start,
# stop, params), or None when the video cannot give that kind.


def _make_one(
    scene: _Scene, source: str, index: int, order: list[str], slot: int, seed: int,
) -> tuple[ValidationVideo, np.ndarray]:
    """Test video `index` of held-out video `source`: its kind is `order[slot % 4]`, or the next one
    the video can give."""
    for step in range(len(order)):
        kind = order[(slot + step) % len(order)]
        rng = np.random.default_rng([seed, zlib.crc32(source.encode()), index, KINDS.index(kind)])
        made = _GENERATORS[kind](scene, rng)
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


def _segment_length(rng: np.random.Generator) -> int:
    return int(rng.integers(SEGMENT_FRAMES[0], SEGMENT_FRAMES[1] + 1))


def _edge(n: int) -> int:
    return min(EDGE_FRAMES, n // 10)


def _object_speed(scene: _Scene, rng: np.random.Generator):
    """A real moving object replayed k times faster along its own path, beside itself."""
    n = len(scene.frames)
    k = int(rng.choice(SPEED_FACTORS))
    want = _segment_length(rng)
    edge = _edge(n)
    # output frames t+1 .. t+L show the object of source frames t+k .. t+kL (all on the track)
    options = []
    whole = {id(d) for d in scene.objects}
    for tr in scene.tracks:
        first = max(tr.start, edge - 1)
        room = (min(tr.end, n - 1 - edge) - first) // k
        if room >= MIN_SEGMENT_FRAMES:
            shaped = sum(id(d) in whole for d in tr.dets) >= len(tr.dets) / 2
            options.append((tr, first, room, shaped))
    # prefer a track of a whole, normal-shaped object with room for a full-length segment; then
    # room over shape; then any
    full = SEGMENT_FRAMES[0]
    for shape, room_needed in ((True, full), (False, full), (True, 0), (False, 0)):
        picked = [o for o in options if (o[3] or not shape) and o[2] >= room_needed]
        if picked:
            options = picked
            break
    if not options:
        return None
    tr, first, room, _ = options[int(rng.integers(len(options)))]
    length = min(want, room)
    t = int(rng.integers(first, min(tr.end, n - 1 - edge) - k * length + 1))
    out = scene.frames.copy()
    for i in range(1, length + 1):
        det = tr.at(t + k * i)
        patch, alpha = _cut(scene.frames[t + k * i], det)
        _paste(out[t + i], patch, alpha * _fade(i, length), det.crop[0], det.crop[1])
    params = {
        "factor": k, "track_frames": [tr.start, tr.end], "source_frames": [t + k, t + k * length],
        "box_at_start": list(tr.at(t + k).box), "normal_speed_px": _r(float(np.hypot(*tr.velocity))),
        "speed_px": _r(k * float(np.hypot(*tr.velocity))),
    }
    return out, np.arange(n), t + 1, t + 1 + length, params


def _foreign_object(scene: _Scene, rng: np.random.Generator):
    """A real object scaled up 1.5-2.5x, moving over the walkway along a real track's direction."""
    n = len(scene.frames)
    if not scene.objects or not scene.tracks:
        return None
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    scale = float(rng.uniform(*FOREIGN_SCALE))
    factor = float(rng.uniform(*FOREIGN_SPEED))
    edge = _edge(n)
    want = min(_segment_length(rng), n - 2 * edge)
    best: tuple[int, np.ndarray, np.ndarray, _Track] | None = None
    # routes follow the direction of long tracks (a short one may be a fragment of a merge)
    long = [tr for tr in scene.tracks if len(tr.dets) >= ROUTE_TRACK_FRAMES] or scene.tracks
    weights = np.array([len(tr.dets) for tr in long], np.float64)
    walking = float(np.median([np.hypot(*tr.velocity) for tr in long]))  # px/frame of a normal walker
    for _ in range(ROUTE_ATTEMPTS):
        tr = long[int(rng.choice(len(long), p=weights / weights.sum()))]
        start = tr.dets[int(rng.integers(len(tr.dets)))].bottom
        direction = tr.velocity / np.hypot(*tr.velocity)
        step = float(rng.choice([-1.0, 1.0])) * factor * walking * direction  # people walk both ways
        steps = 0
        while steps < want:
            x, y = start + step * steps
            if not scene.on_walk(x, y - scene.height_at(y) / 2):  # the centre of a normal object there
                break
            steps += 1
        if best is None or steps > best[0]:
            best = (steps, start, step, tr)
        if steps >= want:
            break
    assert best is not None
    length, start, step, tr = best
    if length < MIN_SEGMENT_FRAMES:
        return None
    t = int(rng.integers(edge, n - edge - length + 1))
    ow, oh = obj.crop[2:]
    base = scale / scene.height_at(float(obj.bottom[1]))
    out = scene.frames.copy()
    for i in range(length):
        x, y = start + step * i
        f = base * scene.height_at(float(y))  # perspective: the size a normal object has there, x scale
        pw, ph = max(2, round(ow * f)), max(2, round(oh * f))
        big, a = _cut(scene.frames[obj.frame], obj, (pw, ph))
        # the object's lower edge (PAD above the crop's lower edge) stands on the path point
        _paste(out[t + i], big, a * _fade(i + 1, length), round(x - pw / 2), round(y - ph + PAD * f))
    params = {
        "scale": _r(scale), "speed_factor": _r(factor), "object_frame": obj.frame, "object_box": list(obj.box),
        "route_track_frames": [tr.start, tr.end], "path_start": [_r(v) for v in start],
        "path_end": [_r(v) for v in start + step * (length - 1)], "speed_px": _r(float(np.hypot(*step))),
    }
    return out, np.arange(n), t, t + length, params


def _frame_speed(scene: _Scene, rng: np.random.Generator):
    """The whole video k times faster over a segment: the video gets (k - 1) * L frames shorter."""
    n = len(scene.frames)
    k = int(rng.choice(SPEED_FACTORS))
    edge = _edge(n)
    length = min(_segment_length(rng), (n - 1 - 2 * edge) // k)
    if length < MIN_SEGMENT_FRAMES:
        return None
    s = int(rng.integers(edge, n - 1 - edge - k * length + 1))
    # source frames 0..s, then s+k, s+2k, ..., s+kL (the fast part), then s+kL+1 .. n-1
    src = np.concatenate([np.arange(s + 1), s + k * np.arange(1, length + 1), np.arange(s + k * length + 1, n)])
    params = {"factor": k, "source_frames": [s + k, s + k * length]}
    return scene.frames[src], src, s + 1, s + 1 + length, params


def _static_paste(scene: _Scene, rng: np.random.Generator):
    """A real object turned on its side, lying still on the walkway."""
    n, h, w = scene.frames.shape[:3]
    places = np.flatnonzero(scene.walk_mask)
    if not scene.objects or not len(places):
        return None
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    scale = float(rng.uniform(*STATIC_SCALE))
    turn = int(rng.choice([1, 3]))  # a quarter turn either way
    edge = _edge(n)
    length = min(_segment_length(rng), n - 2 * edge)
    if length < MIN_SEGMENT_FRAMES:
        return None
    weights = scene.walk.ravel()[places].astype(np.float64)
    place = int(rng.choice(places, p=weights / weights.sum()))
    y, x = divmod(place, w)
    t = int(rng.integers(edge, n - edge - length + 1))
    f = scale * scene.height_at(float(y)) / scene.height_at(float(obj.bottom[1]))
    cw, ch = obj.crop[2:]
    # turned a quarter: the crop's height becomes the patch's width
    pw, ph = max(2, round(ch * f)), max(2, round(cw * f))
    patch, alpha = _cut(scene.frames[obj.frame], obj, (ph, pw))
    patch, alpha = np.rot90(patch, turn).copy(), np.rot90(alpha, turn).copy()
    x0 = int(np.clip(x - pw // 2, 0, max(0, w - pw)))
    y0 = int(np.clip(y - ph // 2, 0, max(0, h - ph)))
    out = scene.frames.copy()
    for i in range(t, t + length):
        _paste(out[i], patch, alpha, x0, y0)
    params = {
        "scale": _r(scale), "turn_degrees": 90 * turn, "object_frame": obj.frame, "object_box": list(obj.box),
        "box": [x0, y0, pw, ph],
    }
    return out, np.arange(n), t, t + length, params


_GENERATORS = {
    "object_speed": _object_speed, "foreign_object": _foreign_object,
    "frame_speed": _frame_speed, "static_paste": _static_paste,
}


def _cut(frame: np.ndarray, det: _Detection, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The object's pixels (h, w, C) float32 and its feathered alpha (h, w), resized to `size`
    (w, h) when given. The edge is feathered at the final size, so scaling up does not widen it;
    an enlarged patch gets back the fine detail of the original (interpolation alone blurs it, and a
    blurry giant would be an easier anomaly than a sharp one)."""
    x, y, w, h = det.crop
    patch = frame[y : y + h, x : x + w].astype(np.float32)
    # The mask comes from blurred frames and reaches ~2 px past the object: take a pixel off, so
    # the paste carries no ring of its source's background.
    mask = cv2.erode(det.mask.astype(np.uint8), np.ones((3, 3), np.uint8))
    if not mask.any():
        mask = det.mask.astype(np.uint8)
    if size is not None and size != (w, h):
        detail = _detail(patch, mask)
        patch = cv2.resize(patch, size, interpolation=cv2.INTER_CUBIC).reshape(size[1], size[0], -1)
        mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        if mask.any():
            high = patch - cv2.GaussianBlur(patch, (0, 0), 1.0).reshape(patch.shape)
            gain = float(np.clip(detail / max(_detail(patch, mask), 1e-3), 1.0, 3.0))
            patch = np.clip(patch + (gain - 1.0) * high, 0, 255)
    return patch, _feather(mask)


def _detail(patch: np.ndarray, mask: np.ndarray) -> float:
    """Fine-detail energy of an object: std of (image - its Gaussian blur, sigma 1) on its pixels."""
    high = patch - cv2.GaussianBlur(patch, (0, 0), 1.0).reshape(patch.shape)
    return float(high[mask.astype(bool)].std()) if mask.any() else 0.0


def _feather(mask: np.ndarray) -> np.ndarray:
    """A soft alpha from a 0/1 mask: a Gaussian edge, zero outside the crop."""
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), FEATHER_SIGMA, borderType=cv2.BORDER_CONSTANT)
    return np.clip(alpha, 0.0, 1.0)


def _paste(frame: np.ndarray, patch: np.ndarray, alpha: np.ndarray, x0: int, y0: int) -> None:
    """Blend `patch` (h, w, C) into `frame` (H, W, C) uint8 in place at (x0, y0), clipped to the frame."""
    H, W = frame.shape[:2]
    h, w = alpha.shape
    xa, ya, xb, yb = max(0, x0), max(0, y0), min(W, x0 + w), min(H, y0 + h)
    if xa >= xb or ya >= yb:
        return
    a = alpha[ya - y0 : yb - y0, xa - x0 : xb - x0, None]
    p = patch[ya - y0 : yb - y0, xa - x0 : xb - x0]
    region = frame[ya:yb, xa:xb].astype(np.float32)
    frame[ya:yb, xa:xb] = np.clip(np.rint(a * p + (1.0 - a) * region), 0, 255).astype(np.uint8)


def _fade(i: int, length: int) -> float:
    """Opacity of frame i (1-based) of a moving paste of `length` frames: 1, then down over the last frames."""
    left = length - i  # frames still to come
    return 1.0 if left >= FADE_FRAMES else (left + 1) / (FADE_FRAMES + 1)


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


def _r(v: float) -> float:
    return round(float(v), 3)


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
