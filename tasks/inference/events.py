"""Events: runs of frames whose score is above the checkpoint's threshold, the alarms a user looks at.

A frame is above when its `score` (calibrated: a percentile rank against the normal clips) exceeds
the threshold in those units, the small checkpoint's calibration quantile (0.95 by default; the
large model's scores are ranks against its own normal clips, so the same quantile applies). Runs of
frames above are merged when the frames below between them last at most `merge_gap_s`, then events
shorter than `min_event_s` are dropped. Times come from the stored frame times
(`tasks.sources.ingest.frame_times`, the source's clock) when the ingest recorded them, else
frame / fps. An event lasts from its first frame's time to the end of its last frame (the next
frame's time), so a one-frame event at 10 fps lasts 0.1 s.

Event rows: video, event (per video from 0), start_frame, end_frame (inclusive), start_s, end_s,
peak_frame, peak_score, mean_score, escalated_share (the share of the clips overlapping the event
that the router escalated), and the peak's box x0, y0, x1, y1 (null: no model gives boxes yet; a
frame table with columns `box_x0`.. `box_y1` fills them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Union

import numpy as np
import pandas as pd
from pydantic import Field

from vad.errors import ParameterError

BOX = ("x0", "y0", "x1", "y1")
EVENT_COLUMNS = ("video", "event", "start_frame", "end_frame", "start_s", "end_s", "peak_frame", "peak_score",
                 "mean_score", "escalated_share", *BOX)

Seconds = Annotated[float, Field(ge=0.0)]
Timing = Union[float, np.ndarray]  # frames per second, or (N,) frame times in seconds


@dataclass(frozen=True)
class EventSettings:
    """How frame scores become events: events shorter than `min_event_s` are dropped; runs above the
    threshold separated by at most `merge_gap_s` below it are one event. Part of `ScoreSettings`."""

    min_event_s: Seconds = 0.5
    merge_gap_s: Seconds = 1.0

    def __post_init__(self) -> None:
        for name in ("min_event_s", "merge_gap_s"):
            if not getattr(self, name) >= 0:
                raise ParameterError(f"events: {name} must be 0 or more seconds, got {getattr(self, name)}")


def _times(n: int, timing: Timing) -> np.ndarray:
    """(n + 1,) start time of each frame and the end of the last (one frame step after it)."""
    if np.ndim(timing) == 0:
        fps = float(timing)  # type: ignore[arg-type]
        if not fps > 0:
            raise ParameterError(f"events need a frame rate > 0, got {fps}")
        return np.arange(n + 1) / fps
    t = np.asarray(timing, dtype=np.float64)
    if len(t) != n:
        raise ParameterError(f"events: {len(t)} frame times for {n} frames")
    step = float(np.median(np.diff(t))) if n > 1 else 0.0
    return np.append(t, t[-1] + step) if n else np.zeros(1)


def _runs(above: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) frame of each run of True values."""
    edges = np.diff(np.r_[0, above.astype(np.int8), 0])
    return list(zip(np.flatnonzero(edges == 1).tolist(), (np.flatnonzero(edges == -1) - 1).tolist()))


def video_events(scores: np.ndarray, threshold: float, timing: Timing, *, min_event_s: float, merge_gap_s: float) -> list[tuple[int, int]]:
    """(first, last) frame of each event of one video's frame scores (frames in order)."""
    scores = np.asarray(scores, dtype=np.float64)
    t = _times(len(scores), timing)
    merged: list[list[int]] = []
    for first, last in _runs(scores > threshold):
        if merged and t[first] - t[merged[-1][1] + 1] <= merge_gap_s + 1e-9:
            merged[-1][1] = last
        else:
            merged.append([first, last])
    return [(a, b) for a, b in merged if t[b + 1] - t[a] >= min_event_s - 1e-9]


def peak_box(frames: pd.DataFrame, row: int) -> dict[str, Any]:
    """The peak frame's box: the frame table's `box_x0`..`box_y1` where a model gave them, else nulls.
    (The hook for models that localise: no model writes these columns yet.)"""
    return {k: (frames[f"box_{k}"].iloc[row] if f"box_{k}" in frames else None) for k in BOX}


def find_events(
    frames: pd.DataFrame, threshold: float, fps_or_times: Timing | Mapping[str, Timing], *, min_event_s: float = 0.5,
    merge_gap_s: float = 1.0, clips: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The event table of a frame table (columns video, frame, score), one row per event.

    `fps_or_times`: the frame rate or the (N,) frame times, for every video or per video (a mapping);
    `clips` (video, start_frame, end_frame exclusive, escalated) gives each event's escalated share.
    """
    EventSettings(min_event_s, merge_gap_s)  # checks them
    rows = []
    frames = frames.sort_values(["video", "frame"], kind="stable")
    by_clip = dict(tuple(clips.groupby("video", sort=False))) if clips is not None and len(clips) else {}
    for vid, f in frames.groupby("video", sort=False, observed=True):
        f = f.reset_index(drop=True)
        timing = fps_or_times[vid] if isinstance(fps_or_times, Mapping) else fps_or_times
        t = _times(len(f), timing)
        score = f["score"].to_numpy(np.float64)
        number = f["frame"].to_numpy(np.int64)
        c = by_clip.get(vid)
        for i, (a, b) in enumerate(video_events(score, threshold, timing, min_event_s=min_event_s, merge_gap_s=merge_gap_s)):
            peak = a + int(np.argmax(score[a : b + 1]))
            share = float("nan")
            if c is not None:
                covering = (c["start_frame"].to_numpy() <= number[b]) & (c["end_frame"].to_numpy() > number[a])
                share = float(c["escalated"].to_numpy(bool)[covering].mean()) if covering.any() else float("nan")
            rows.append({
                "video": str(vid), "event": i, "start_frame": int(number[a]), "end_frame": int(number[b]),
                "start_s": float(t[a]), "end_s": float(t[b + 1]), "peak_frame": int(number[peak]),
                "peak_score": float(score[peak]), "mean_score": float(score[a : b + 1].mean()),
                "escalated_share": share, **peak_box(f, peak),
            })
    return event_table(rows)


def event_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as the events table, with its column types (an empty table keeps them too)."""
    out = pd.DataFrame(rows, columns=list(EVENT_COLUMNS))
    types = {"video": str, "event": np.int32, "start_frame": np.int32, "end_frame": np.int32, "start_s": np.float64,
             "end_s": np.float64, "peak_frame": np.int32, "peak_score": np.float64, "mean_score": np.float64,
             "escalated_share": np.float64, **{k: "Float64" for k in BOX}}
    return out.astype(types)


def store_timing(attrs: Mapping[str, Any], *, rate: float | None = None) -> Timing:
    """A stored video's frame times (seconds, the source's clock) or, when the ingest recorded none, its fps.

    A folder of frame images has no rate of its own (fps None): its recorded times are FFmpeg's image2
    guess of 25 fps, so `rate` (the rate the scoring model assumed) wins there when given."""
    from vad.tasks.sources.ingest import frame_times

    fps = attrs.get("fps")
    if not fps and rate:
        return float(rate)
    times = frame_times(dict(attrs))
    if times is not None and len(times) == int(attrs.get("frame_count", len(times))):
        return times
    if not fps:
        raise ParameterError("events need the video's frame times or frame rate; the store recorded neither")
    return float(fps)


def duration_s(n_frames: int, timing: Timing) -> float:
    """Seconds of footage in `n_frames` frames: from the first frame's time to the end of the last."""
    t = _times(n_frames, timing)
    return float(t[-1] - t[0])


def run_events(store_url: str, frames: pd.DataFrame, clips: pd.DataFrame, threshold: float,
               settings: EventSettings, *, fps: float | None = None) -> tuple[pd.DataFrame, dict[str, float]]:
    """The events of a scored run, with each video's timing read from the clip store (`fps` where the
    store no longer holds the video), and the seconds of footage of each video (for alarms per hour)."""
    from vad.storage import ClipStore

    from vad.errors import NotFoundError, PipelineError

    try:
        store: ClipStore | None = ClipStore.open(store_url)
    except NotFoundError:
        store = None
    timing: dict[str, Timing] = {}
    for v in pd.unique(frames["video"]):
        try:
            timing[v] = store_timing(store.video(v).attrs, rate=fps)  # type: ignore[union-attr]
        except (PipelineError, KeyError, AttributeError):  # no store, or not this video (an archive run's dropped frames)
            if not fps:
                raise ParameterError(f"events: no timing for video {v!r} (not in {store_url}, and no frame rate given)") from None
            timing[v] = float(fps)
    counts = frames.groupby("video", sort=False, observed=True).size()
    seconds = {str(v): duration_s(int(counts[v]), timing[v]) for v in timing}
    found = find_events(frames, threshold, timing, min_event_s=settings.min_event_s, merge_gap_s=settings.merge_gap_s,
                        clips=clips)
    return found, seconds
