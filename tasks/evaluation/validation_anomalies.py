"""The synthetic anomalies of the validation set (`vad.tasks.evaluation.validation`, whose docstring says
why these kinds). Each maker takes the analysed scene of a held-out normal video and a seeded
generator and returns (frames, source index, start, stop, params), or None when the video cannot
give that kind."""

from __future__ import annotations

import cv2
import numpy as np
from vad.tasks.evaluation.validation_scene import PAD, Detection, Scene, Track

KINDS = ("object_speed", "foreign_object", "frame_speed", "static_paste")

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
ROUTE_ATTEMPTS = 40
ROUTE_TRACK_FRAMES = 20


def _segment_length(rng: np.random.Generator) -> int:
    return int(rng.integers(SEGMENT_FRAMES[0], SEGMENT_FRAMES[1] + 1))


def _edge(n: int) -> int:
    return min(EDGE_FRAMES, n // 10)


def _object_speed(scene: Scene, rng: np.random.Generator):
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


def _foreign_object(scene: Scene, rng: np.random.Generator):
    """A real object scaled up 1.5-2.5x, moving over the walkway along a real track's direction."""
    n = len(scene.frames)
    if not scene.objects or not scene.tracks:
        return None
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    scale = float(rng.uniform(*FOREIGN_SCALE))
    factor = float(rng.uniform(*FOREIGN_SPEED))
    edge = _edge(n)
    want = min(_segment_length(rng), n - 2 * edge)
    best: tuple[int, np.ndarray, np.ndarray, Track] | None = None
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


def _frame_speed(scene: Scene, rng: np.random.Generator):
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


def _static_paste(scene: Scene, rng: np.random.Generator):
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


# kind -> its maker (the kinds of `KINDS`)
GENERATORS = {
    "object_speed": _object_speed, "foreign_object": _foreign_object,
    "frame_speed": _frame_speed, "static_paste": _static_paste,
}


def _cut(frame: np.ndarray, det: Detection, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
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


def _r(v: float) -> float:
    return round(float(v), 3)
