"""Time and peak memory of fitting the default models (`motion_patch`, `objects`) on long normal footage.

    python benchmarks/fit_memory.py [--video ../shared/videos/intel_one-by-one-person-detection_768x432_h264.mp4]
        [--minutes 10] [--fps 25] [--size 360,480] [--models motion_patch,objects] [--set objects:bank_cap=50000]

A real video is decoded once (FFmpeg, colour at `--size`, as a colour store holds it) and looped into
`--minutes` of footage at `--fps`; each model's `fit` reads it the way `vad train` feeds it (`fit_model`:
16-frame uint8 clips side by side, batches of 8, through `prepare_clips`: the luma for gray models,
(B, C, T, H, W) floats in [0, 1]), generated on the fly, so the footage is never held.
Each model fits in its own child process; `peak_rss_mb` is that process's high-water mark
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`), which includes the looped source (H x W x 3 bytes a
frame of the video) and the interpreter with torch and OpenCV (about 350 MB). Prints one table row per model.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
VIDEO = ROOT.parent / "shared" / "videos" / "intel_one-by-one-person-detection_768x432_h264.mp4"
CLIP, BATCH = 16, 8


def _decode(video: Path, height: int, width: int) -> np.ndarray:
    from vad.tasks.sources.ffmpeg_io import DecodeSpec, read_frames

    with read_frames(str(video), DecodeSpec(height, width, 3), batch_frames=256) as reader:
        return np.concatenate(list(reader))  # (N, H, W, 3) uint8


def _clips(source: np.ndarray, frames: int, channels: int) -> Iterator[torch.Tensor]:
    """`frames` frames of the looped colour source as batches of side-by-side clips, (B, C, T, H, W) in
    [0, 1], C = `channels` (1: the luma, as `vad train` gives a gray model on a colour store)."""
    from vad.tasks.runtime.model_input import InputSpec, prepare_clips

    spec = InputSpec(CLIP, CLIP, source.shape[1], source.shape[2], channels)
    n_clips = frames // CLIP
    pos = 0
    for first in range(0, n_clips, BATCH):
        b = min(BATCH, n_clips - first)
        idx = (pos + np.arange(b * CLIP)) % len(source)
        pos += b * CLIP
        yield prepare_clips(torch.from_numpy(source[idx]).view(b, CLIP, *source.shape[1:]), spec, (0.0, 1.0))


def _child(args: argparse.Namespace) -> None:
    from vad.models import build
    from vad.tasks.runtime.compute import available_cores

    torch.set_num_threads(available_cores())
    h, w = args.size
    source = _decode(Path(args.video), h, w)
    frames = round(args.minutes * 60 * args.fps)
    options = dict(kv.split("=", 1) for m, kv in (s.split(":", 1) for s in args.set) if m == args.child)
    model = build(args.child, clip_len=CLIP, height=h, width=w, fps=args.fps, **{k: float(v) if "." in v else int(v) for k, v in options.items()}).eval()
    t0 = time.perf_counter()
    record = model.fit(_clips(source, frames, 1 if model.gray_only else 3))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    print(json.dumps({**{k: round(v, 3) for k, v in record.items()}, "model": args.child, "minutes": args.minutes,
                      "frames": frames // CLIP * CLIP, "fit_s": round(seconds, 1), "frames_per_s": round(frames / seconds),
                      "peak_rss_mb": round(peak)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", default=str(VIDEO))
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--size", type=lambda s: tuple(int(v) for v in s.split(",")), default=(360, 480))
    p.add_argument("--models", default="motion_patch,objects")
    p.add_argument("--set", action="append", default=[], help="MODEL:KEY=VALUE, a config field of one model")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return _child(args)
    rows = []
    for model in args.models.split(","):
        cmd = [sys.executable, __file__, "--child", model, "--video", args.video, "--minutes", str(args.minutes),
               "--fps", str(args.fps), "--size", ",".join(map(str, args.size)), *sum((["--set", s] for s in args.set), [])]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'model':<13} {'minutes':>7} {'frames':>8} {'fit_s':>8} {'frames/s':>9} {'peak_rss_mb':>11}")
    for r in rows:
        print(f"{r['model']:<13} {r['minutes']:>7g} {r['frames']:>8} {r['fit_s']:>8} {r['frames_per_s']:>9} {r['peak_rss_mb']:>11}")


if __name__ == "__main__":
    main()
