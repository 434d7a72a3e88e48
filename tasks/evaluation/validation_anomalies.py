"""The synthetic anomalies of the validation set (`vad.tasks.evaluation.validation`, whose docstring says
why these kinds). Each maker takes one analysed piece of held-out normal footage and a seeded
generator and returns (frames, source index, start, stop, params), or None when the piece cannot give
that kind (nothing moves in it, or it is too short). Frames outside [start, stop) are the piece's own,
untouched; the source index maps each output frame to the piece's frame it shows outside the anomaly."""

from __future__ import annotations

import cv2
import numpy as np
from vad.tasks.evaluation.validation_scene import Piece, taper

KINDS = ("local_speed", "reverse", "scale_up", "freeze", "paste", "frame_speed")

# Durations in seconds (at the piece's frame rate): an anomaly lasts as long as a cyclist crossing part
# of the view or a fall with its struggle; normal footage is kept before and after it.
ANOMALY_S = (2.0, 4.0)
MIN_ANOMALY_FRAMES = 8  # the shortest accepted when a piece allows no longer
EDGE_S = 1.0  # normal footage kept at each end (at most a tenth of the piece)
FADE_S = 0.2  # a region fades in and out over this long (at most a quarter of the anomaly)
WINDOW_FRAC = (0.2, 0.35)  # window side, of the frame height: one person near the camera, a few far off
FEATHER_FRAC = 0.15  # of the window side: its raised-cosine edge
SPEED_FACTORS = (2, 3)  # whole steps: motion stays smooth (2.5x would alternate steps of 2 and 3)
SCALE = (1.5, 2.0)
ATTEMPTS = 6  # start times tried per anomaly; the one whose window moves most is kept
CENTRE_SMOOTH = 5  # frames: the moving average of a zoom's centre


def _length(piece: Piece, rng: np.random.Generator, room: int) -> int | None:
    want = max(MIN_ANOMALY_FRAMES, round(float(rng.uniform(*ANOMALY_S)) * piece.fps))
    length = min(want, room)
    return length if length >= MIN_ANOMALY_FRAMES else None


def _edge(piece: Piece) -> int:
    return min(round(EDGE_S * piece.fps), piece.n // 10)


def _side(piece: Piece, rng: np.random.Generator) -> int:
    h, w = piece.size
    return int(min(h, w, max(4, round(float(rng.uniform(*WINDOW_FRAC)) * h))))


def _fades(piece: Piece, length: int) -> np.ndarray:
    """(length,) opacity of each anomalous frame: up over the first frames, 1, down over the last."""
    f = max(1, min(round(FADE_S * piece.fps), length // 4))
    i = np.arange(length)
    return np.minimum(1.0, np.minimum(i + 1, length - i) / (f + 1)).astype(np.float32)


def _place(piece: Piece, rng: np.random.Generator, first: int, last: int, length: int, used) -> tuple | None:
    """Start t in [first, last] and a window where the source frames `used(t)` = (a, b) move most,
    over `ATTEMPTS` seeded starts; None when nothing moves."""
    if last < first:
        return None
    side = _side(piece, rng)
    best = None
    for t in rng.integers(first, last + 1, size=ATTEMPTS):
        a, b = used(int(t))
        got = piece.window(a, b, side, rng)
        if got is not None and (best is None or got[2] > best[1][2]):
            best = (int(t), got)
    if best is None:
        return None
    t, (x0, y0, energy) = best
    return t, x0, y0, side, energy


def _window_replay(piece: Piece, rng: np.random.Generator, kind: str):
    """The kinds that replay a window of the same place at other times (speed, reverse, freeze)."""
    n, edge = piece.n, _edge(piece)
    k = int(rng.choice(SPEED_FACTORS)) if kind == "local_speed" else 1
    if kind == "local_speed":  # out[t + i] shows source t + k (i + 1) in the window
        length = _length(piece, rng, (n - 1 - 2 * edge) // k)
        if length is None:
            return None
        plan = _place(piece, rng, edge, n - 1 - edge - k * length, length, lambda t: (t, t + k * length + 1))
        source = lambda t, i: t + k * (i + 1)  # noqa: E731
    elif kind == "reverse":  # out[t + i] shows source t - 1 - i: the window runs backwards from t
        length = _length(piece, rng, (n - 2 * edge) // 2)
        if length is None:
            return None
        plan = _place(piece, rng, max(edge, length), n - edge - length, length, lambda t: (t - length, t + length))
        source = lambda t, i: t - 1 - i  # noqa: E731
    else:  # freeze: out[t + i] shows source t - 1, while the rest of the frame goes on
        length = _length(piece, rng, n - 2 * edge - 1)
        if length is None:
            return None
        plan = _place(piece, rng, max(edge, 1), n - edge - length, length, lambda t: (t, t + length))
        source = lambda t, i: t - 1  # noqa: E731
    if plan is None:
        return None
    t, x0, y0, side, energy = plan
    alpha = taper(side, side, round(FEATHER_FRAC * side))
    out = piece.frames.copy()
    for i, fade in enumerate(_fades(piece, length)):
        patch = piece.frames[source(t, i), y0 : y0 + side, x0 : x0 + side].astype(np.float32)
        _paste(out[t + i], patch, alpha * fade, x0, y0)
    params = {"window": [x0, y0, side], "source_frames": [source(t, 0), source(t, length - 1)], "motion": _r(energy)}
    if kind == "local_speed":
        params["factor"] = k
    return out, np.arange(n), t, t + length, params


def _local_speed(piece: Piece, rng: np.random.Generator):
    """A window where the footage moves, replayed 2-3x faster while the rest of the frame keeps its pace."""
    return _window_replay(piece, rng, "local_speed")


def _reverse(piece: Piece, rng: np.random.Generator):
    """A window where the footage moves, played backwards from the anomaly's start."""
    return _window_replay(piece, rng, "reverse")


def _freeze(piece: Piece, rng: np.random.Generator):
    """A window where the footage moves, frozen on the frame before the anomaly."""
    return _window_replay(piece, rng, "freeze")


def _scale_up(piece: Piece, rng: np.random.Generator):
    """What moves in a window, drawn 1.5-2x larger about its own centre, frame by frame."""
    n, edge = piece.n, _edge(piece)
    (H, W), s = piece.size, float(rng.uniform(*SCALE))
    length = _length(piece, rng, n - 2 * edge)
    if length is None:
        return None
    plan = _place(piece, rng, edge, n - edge - length, length, lambda t: (t, t + length))
    if plan is None:
        return None
    t, x0, y0, side, energy = plan
    edge_taper = taper(side, side, round(FEATHER_FRAC * side))
    alphas, centres = [], []
    for i in range(length):
        a = piece.alpha(t + i, x0, y0, side) * edge_taper
        if a.max() < 1e-3:  # nothing moves in this frame: zoom the window itself
            a = edge_taper
        ys, xs = np.mgrid[0:side, 0:side]
        centres.append((x0 + float((a * xs).sum() / a.sum()), y0 + float((a * ys).sum() / a.sum())))
        alphas.append(a)
    kernel = np.ones(min(CENTRE_SMOOTH, length)) / min(CENTRE_SMOOTH, length)
    smooth = np.stack([np.convolve(np.pad(c, len(kernel) // 2, mode="edge"), kernel, mode="valid")[:length]
                       for c in np.array(centres).T], axis=1)
    out = piece.frames.copy()
    canvas = np.zeros((H, W), np.float32)
    for i, fade in enumerate(_fades(piece, length)):
        cx, cy = smooth[i]
        m = np.float32([[s, 0, (1 - s) * cx], [0, s, (1 - s) * cy]])
        canvas[:] = 0
        canvas[y0 : y0 + side, x0 : x0 + side] = alphas[i]
        frame = piece.frames[t + i]
        big = cv2.warpAffine(frame, m, (W, H), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT).reshape(frame.shape)
        a = cv2.warpAffine(canvas, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        _paste(out[t + i], big.astype(np.float32), np.clip(a, 0, 1) * fade, 0, 0)
    params = {"window": [x0, y0, side], "scale": _r(s), "motion": _r(energy)}
    return out, np.arange(n), t, t + length, params


def _paste(frame: np.ndarray, patch: np.ndarray, alpha: np.ndarray, x0: int, y0: int) -> None:
    """Blend `patch` (h, w, C) into `frame` (H, W, C) uint8 in place at (x0, y0), clipped to the frame;
    where alpha is 0 the frame keeps its bytes."""
    H, W = frame.shape[:2]
    h, w = alpha.shape
    xa, ya, xb, yb = max(0, x0), max(0, y0), min(W, x0 + w), min(H, y0 + h)
    if xa >= xb or ya >= yb:
        return
    a = alpha[ya - y0 : yb - y0, xa - x0 : xb - x0, None]
    p = patch[ya - y0 : yb - y0, xa - x0 : xb - x0]
    region = frame[ya:yb, xa:xb].astype(np.float32)
    frame[ya:yb, xa:xb] = np.clip(np.rint(a * p + (1.0 - a) * region), 0, 255).astype(np.uint8)


def _moved_paste(piece: Piece, rng: np.random.Generator):
    """What moves in one window, copied (its shape from three-frame differencing) into another window
    of the motion area, at another time."""
    n, edge = piece.n, _edge(piece)
    length = _length(piece, rng, n - 2 * edge)
    if length is None:
        return None
    side = _side(piece, rng)
    best = None
    for s0 in rng.integers(0, n - length + 1, size=ATTEMPTS):
        got = piece.window(int(s0), int(s0) + length, side, rng)
        if got is not None and (best is None or got[2] > best[1][2]):
            best = (int(s0), got)
    if best is None:
        return None
    s0, (xa, ya, energy) = best
    dest = piece.busy_window(side, rng, avoid=(xa, ya))
    if dest is None:
        return None
    xb, yb, _ = dest
    t = int(rng.integers(edge, n - edge - length + 1))
    edge_taper = taper(side, side, round(FEATHER_FRAC * side))
    out = piece.frames.copy()
    for i, fade in enumerate(_fades(piece, length)):
        a = piece.alpha(s0 + i, xa, ya, side) * edge_taper
        patch = piece.frames[s0 + i, ya : ya + side, xa : xa + side].astype(np.float32)
        _paste(out[t + i], patch, a * fade, xb, yb)
    params = {"from_window": [xa, ya, side], "to_window": [xb, yb, side], "source_frames": [s0, s0 + length - 1],
              "motion": _r(energy)}
    return out, np.arange(n), t, t + length, params


def _frame_speed(piece: Piece, rng: np.random.Generator):
    """The whole frame k times faster over a segment: the video gets (k - 1) * L frames shorter."""
    n, edge = piece.n, _edge(piece)
    k = int(rng.choice(SPEED_FACTORS))
    length = _length(piece, rng, (n - 1 - 2 * edge) // k)
    if length is None:
        return None
    s = int(rng.integers(edge, n - 1 - edge - k * length + 1))
    # source frames 0..s, then s+k, s+2k, ..., s+kL (the fast part), then s+kL+1 .. n-1
    src = np.concatenate([np.arange(s + 1), s + k * np.arange(1, length + 1), np.arange(s + k * length + 1, n)])
    return piece.frames[src], src, s + 1, s + 1 + length, {"factor": k, "source_frames": [s + k, s + k * length]}


# kind -> its maker (the kinds of `KINDS`)
GENERATORS = {
    "local_speed": _local_speed, "reverse": _reverse, "scale_up": _scale_up, "freeze": _freeze,
    "paste": _moved_paste, "frame_speed": _frame_speed,
}


def _r(v: float) -> float:
    return round(float(v), 3)
