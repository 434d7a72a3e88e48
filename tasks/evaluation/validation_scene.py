"""Scene analysis for the validation-set maker (`vad.tasks.evaluation.validation`): the background
model of one normal video (its median), the objects found as connected components of the foreground,
their tracks (linked by box overlap), the walk area (where objects go) and the perspective (how tall a
normal object is at each height in the frame)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from vad.tasks.sources.luma import luma

PAD = 3  # px around an object's box, room for the feathered edge of a paste

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


@dataclass
class Detection:
    """One object in one frame: a connected component of the foreground."""

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
class Track:
    """One object over consecutive frames, a detection per frame."""

    dets: list[Detection]

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

    def at(self, frame: int) -> Detection:
        return self.dets[frame - self.start]


@dataclass
class Scene:
    """What `analyse` found in one normal video: where objects go, their tracks, their size by height."""

    frames: np.ndarray  # (N, H, W, C) uint8
    walk: np.ndarray  # (H, W) float32: smoothed foreground frequency
    walk_mask: np.ndarray  # (H, W) bool
    tracks: list[Track]  # moving tracks only
    objects: list[Detection]  # whole single objects of moving tracks, to cut
    height_line: tuple[float, float]  # normal object height = a + b * y of its lower edge

    def height_at(self, y: float) -> float:
        a, b = self.height_line
        return max(4.0, a + b * y)

    def on_walk(self, x: float, y: float) -> bool:
        h, w = self.walk_mask.shape
        xi, yi = round(x), round(y)
        return 0 <= xi < w and 0 <= yi < h and bool(self.walk_mask[yi, xi])


def analyse(frames: np.ndarray) -> Scene:
    """The background model of one normal video: its objects, their tracks and the walk area."""
    gray = luma(frames)
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
    per_frame: list[list[Detection]] = []
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
            dets.append(Detection(t, (x, y, bw, bh), area, (cx, cy, cw, ch), mask))
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
    scene = Scene(frames, walk, walk_mask, tracks, [], line)
    scene.objects = _normal_shaped(single, scene)
    return scene


def _link(per_frame: list[list[Detection]]) -> list[Track]:
    """Tracks from detections: greedy one-to-one matching of consecutive frames by box overlap;
    a track ends where its object merges with another, splits, or is lost."""
    done: list[Track] = []
    active: list[Track] = []
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
        nxt += [Track([d]) for j, d in enumerate(dets) if j not in used_d]
        active = sorted(nxt, key=lambda tr: (tr.start, tuple(tr.dets[0].box)))
    return sorted(done + active, key=lambda tr: (tr.start, tuple(tr.dets[0].box)))


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter)


def _single_objects(dets: list[Detection], h: int, w: int) -> list[Detection]:
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


def _normal_shaped(dets: list[Detection], scene: Scene) -> list[Detection]:
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


def _height_line(dets: list[Detection]) -> tuple[float, float]:
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

