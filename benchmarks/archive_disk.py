"""Disk an archive run uses per hour of 1280x720 footage scored: what `vad backfill` leaves in the
workspace (stores, archive runs, score tables) and its peak while it runs.

    python benchmarks/archive_disk.py [--minutes 1] [--size 240x360] [--real ../shared/videos/X.mp4]
        [--keep-frames] [--work DIR]

Inputs, each one archive file of `--minutes` at 1280x720 25 fps: the synthetic test video of
`benchmarks/throughput.py` (a 10 s rendered piece looped), and with `--real` a real camera file
scaled to 1280x720 and looped to the same length. The models are untrained stand-ins of the
default pair (`vae3d` small, `predictor` large; weights do not change what is stored) fitted to
frames stored at `--size` gray (240x360: the Ped2 checkpoints' stored size). The backfill runs as
`python -m vad.flows.cli backfill ... --root <workspace>` from this file's repository, so the same
script measures any checkout. Disk is the apparent size of every file under the workspace except
the checkpoints and the CLI's Prefect home, sampled every 0.2 s during the run for the peak; per hour = size x 60 / minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from vad.storage import ClipStore
from vad.tasks.sources.datasets import VideoSource
from vad.tasks.sources.ffmpeg_io import ffmpeg_exe
from vad.tasks.sources.ingest import Preprocess, ingest_video

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python benchmarks/archive_disk.py` puts benchmarks/, not the repository, on the path

from benchmarks.throughput import (  # noqa: E402
    SYNTH_FPS,
    synthetic_piece,
    synthetic_source,
    untrained,
)

MB = 1 << 20


def tree_bytes(root: Path) -> dict[str, int]:
    """Bytes of the files under each top-level folder of `root` but the checkpoints and hidden
    folders (the CLI's Prefect home, `.prefect`)."""
    out: dict[str, int] = {}
    for top in root.iterdir() if root.exists() else []:
        if top.name == "checkpoints" or top.name.startswith(".") or not top.is_dir():
            continue
        total = 0
        for dirpath, _, files in os.walk(top):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:  # removed while walking
                    pass
        out[top.name] = total
    return out


def real_source(path: Path, minutes: float, work: Path) -> Path:
    """`path` scaled to 1280x720 25 fps and looped to `minutes`, encoded once (H.264)."""
    out = work / f"real-720p-{minutes:g}min.mp4"
    if not out.exists():
        cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(path), "-t", str(minutes * 60),
               "-an", "-vf", f"scale=1280:720,fps={SYNTH_FPS}", "-c:v", "libx264", "-preset", "veryfast", str(out)]
        subprocess.run(cmd, check=True)
    return out


def checkpoints(work: Path, root: Path, dataset: str, size: tuple[int, int]) -> None:
    """Untrained small and large checkpoints for frames stored at `size` gray, in the workspace."""
    piece, _ = synthetic_piece(work, 250)
    url = str(work / f"fit-{size[0]}x{size[1]}.zarr")
    ingest_video(url, VideoSource("fit", "train", str(piece), "file"), Preprocess(size=size, gray=True), dataset="fit")
    video = ClipStore.open(url).video("fit")
    folder = root / "checkpoints" / dataset
    folder.mkdir(parents=True, exist_ok=True)
    for seed, role in enumerate(("small", "large")):
        untrained(None, role, video, folder, seed)


def measure(name: str, video: Path, work: Path, args: argparse.Namespace) -> dict:
    root = work / f"ws-{name}"
    shutil.rmtree(root, ignore_errors=True)
    h, w = (int(v) for v in args.size.split("x"))
    checkpoints(work, root, "cam", (h, w))
    archive = work / f"archive-{name}" / "2026-11-20"
    shutil.rmtree(archive.parent, ignore_errors=True)
    archive.mkdir(parents=True)
    os.link(video, archive / "cam1.mp4")  # a hard link: the listing takes files, not symbolic links
    cmd = [sys.executable, "-m", "vad.flows.cli", "backfill", str(archive.parent), "--dataset", "cam", "--root", str(root)]
    if args.keep_frames:
        cmd.append("--keep-frames")
    peak, done = {"bytes": 0}, threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["bytes"] = max(peak["bytes"], sum(tree_bytes(root).values()))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    print(proc.stdout.strip())
    if proc.returncode != 0:
        sys.exit(f"backfill failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    left = tree_bytes(root)
    per_hour = 60 / args.minutes
    return {
        "input": name, "minutes": args.minutes, "seconds": round(seconds, 1),
        "left_mb": round(sum(left.values()) / MB, 2),
        "left_by_folder_mb": {k: round(v / MB, 2) for k, v in sorted(left.items())},
        "peak_mb": round(max(peak["bytes"], sum(left.values())) / MB, 2),
        "left_per_hour_mb": round(sum(left.values()) / MB * per_hour, 1),
        "peak_per_hour_mb": round(max(peak["bytes"], sum(left.values())) / MB * per_hour, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--size", default="240x360", help="stored frame size HxW (gray) the models expect")
    parser.add_argument("--real", help="a real video file to scale to 720p and loop (e.g. ../shared/videos/...mp4)")
    parser.add_argument("--keep-frames", action="store_true", help="pass --keep-frames to the backfill")
    parser.add_argument("--work", help="keep the work here (videos are reused); default a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vad-archive-disk-") as tmp:
        work = Path(args.work or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        inputs = {"synthetic": Path(synthetic_source(work, args.minutes).uri)}
        if args.real:
            inputs["real"] = real_source(Path(args.real).resolve(), args.minutes, work)
        rows = [measure(name, video, work, args) for name, video in inputs.items()]
    print(f"\nrepository: {REPO}; stored at {args.size} gray; keep_frames={args.keep_frames}")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
