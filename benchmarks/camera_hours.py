"""Camera-hours scored per machine-hour: a backfill of an hour-scale 720p recording with the defaults.

    python benchmarks/camera_hours.py [--video FILE] [--minutes 60] [--budget 0.2] [--cores N] [--root DIR]

The camera is a real fixed-camera recording (one of ../shared/videos) re-encoded as 1280x720 H.264:
one copy of it is the normal footage both default models are fitted on (`vad train`'s path, stored
at the default size, 480 rows, RGB), and the same recording looped to `--minutes` of footage is the
archive file scored the way an archive run scores a video (`score_archive_video`'s steps, each timed):
decode and store (FFmpeg, scene cuts, compression), pass 1 (the small model on every clip), routing,
pass 2 (the large model on the escalated clips, `--budget` of them), and writing the clip, frame and
event tables. It prints how the time divides, and camera-hours per machine-hour: minutes of footage
over minutes of work, the figure to plan a backfill with. `--cores N` pins the process (and FFmpeg)
to N cores, so two runs show what one more core buys. The looped footage repeats itself, which does
not change the cost of any stage.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from vad.storage import ClipStore, write_table
from vad.tasks.inference.events import find_events, store_timing
from vad.tasks.inference.routing import BatchBudget
from vad.tasks.inference.scoring import VideoMap, score_videos
from vad.tasks.learning.training import TrainConfig, train_model
from vad.tasks.runtime.checkpoint import cached_checkpoint
from vad.tasks.sources.datasets import VideoSource
from vad.tasks.sources.ffmpeg_io import ffmpeg_exe
from vad.tasks.sources.ingest import Preprocess, ingest_video

SHARED = Path(__file__).resolve().parents[2] / "shared"


def say(msg: str) -> None:
    print(msg, flush=True)


class StageClock(VideoMap):
    """`score_videos`' plain loop with each stage's wall time kept in `seconds`."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):  # noqa: ANN201
        t0 = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def encode_720p(video: Path, out: Path, loops: int = 1) -> Path:
    """`video` scaled to 1280x720 and looped `loops` times, as H.264 (libx264 CRF 23, no audio)."""
    subprocess.run([
        ffmpeg_exe(), "-nostdin", "-v", "error", "-stream_loop", str(loops - 1), "-i", str(video),
        "-vf", "scale=1280:720", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-an", "-y", str(out),
    ], check=True)
    return out


def loop_copy(one: Path, out: Path, loops: int) -> Path:
    """`one` repeated `loops` times without re-encoding (stream copy): an hour of 720p H.264 in
    seconds, where encoding it took longer than scoring it. Kept under `--root` for the next run."""
    if not out.exists():
        part = out.with_name(f".{out.name}.part.mp4")
        subprocess.run([
            ffmpeg_exe(), "-nostdin", "-v", "error", "-stream_loop", str(loops - 1), "-i", str(one),
            "-c", "copy", "-an", "-y", str(part),
        ], check=True)
        part.rename(out)
    return out


def duration_s(path: Path) -> float:
    """The file's length in seconds, as FFmpeg reads it."""
    probe = subprocess.run([ffmpeg_exe(), "-nostdin", "-i", str(path)], capture_output=True, text=True)
    stamp = probe.stderr.split("Duration: ")[1].split(",")[0]
    h, m, s = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", type=Path, default=SHARED / "videos" / "intel_one-by-one-person-detection_768x432_h264.mp4")
    ap.add_argument("--minutes", type=float, default=60.0, help="minutes of archive footage to score")
    ap.add_argument("--budget", type=float, default=0.2, help="share of clips the large model re-scores")
    ap.add_argument("--cores", type=int, default=0, help="pin to this many cores (0: all)")
    ap.add_argument("--root", type=Path, default=None, help="workspace (default: a temporary folder)")
    args = ap.parse_args()
    if not args.video.is_file():
        sys.exit(f"error: {args.video}: no such file (pass --video)")
    if args.minutes <= 0 or not 0 <= args.budget <= 1 or args.cores < 0:
        sys.exit("error: --minutes must be > 0, --budget in [0, 1], --cores >= 0")
    if args.cores:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cores]))
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="vad-hours-") as tmp:
        root = args.root or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        one = root / f"{args.video.stem}-720p.mp4"
        if not one.exists():
            encode_720p(args.video, one)
        loops = max(1, round(args.minutes * 60 / duration_s(one)))
        say(f"archive file: the recording looped {loops} times (stream copy)")
        archive = loop_copy(one, root / f"{args.video.stem}-720p-x{loops}.mp4", loops)
        footage_s = duration_s(archive)

        train_url = str(root / "camera.zarr")
        ingest_video(train_url, VideoSource("camera", "train", str(one), "file"), Preprocess(), dataset="camera")
        paths = {}
        for role in ("small", "large"):
            paths[role] = root / f"{role}.pt"
            if not paths[role].exists():
                say(f"fit the default {role} model on the camera's normal footage")
                train_model(train_url, paths[role], TrainConfig(role=role, workers=0), log=lambda _msg: None)
        small, large = cached_checkpoint(paths["small"]), cached_checkpoint(paths["large"])

        work_url = str(root / "work.zarr")
        t0 = time.perf_counter()
        ingested = ingest_video(work_url, VideoSource("archive", "test", str(archive), "file"), Preprocess(), dataset="camera")
        decode = time.perf_counter() - t0
        clock = StageClock()
        result = score_videos(work_url, small, large, BatchBudget(args.budget), videos=["archive"], split=None, mapper=clock)
        t0 = time.perf_counter()
        stored = ClipStore.open(work_url).video("archive")
        events = find_events(result.frames, small.calibration.quantile,
                             store_timing(stored.attrs, rate=small.model_config.get("fps")), clips=result.clips)
        for table, rows in (("clips", result.clips), ("frames", result.frames), ("events", events)):
            write_table(str(root), table, "camera", "hours", rows, part="archive")
        writing = time.perf_counter() - t0

    stages = {"decode and store": decode, "pass 1 (small, every clip)": clock.seconds.get("pass1", 0.0),
              "routing": clock.seconds.get("routing", 0.0), f"pass 2 (large, {result.routing.escalated.mean():.0%} of clips)":
              clock.seconds.get("pass2", 0.0), "frame scores": clock.seconds.get("frames", 0.0), "writing tables": writing}
    total = sum(stages.values())
    table = pd.DataFrame([{"stage": k, "seconds": v, "share": v / total} for k, v in stages.items()])
    say(f"\n{ingested.frames:,} frames ({footage_s / 60:.1f} min of 720p footage, stored {stored.frames.shape[1]}x"
        f"{stored.frames.shape[2]}x{stored.frames.shape[3]}), {small.arch} + {large.arch}, {cores} cores")
    say(table.round(3).to_string(index=False))
    say(f"camera-hours per machine-hour: {footage_s / total:.2f} ({footage_s:.0f} s of footage in {total:.0f} s)")


if __name__ == "__main__":
    main()
