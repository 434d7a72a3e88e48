"""Which Zarr codec for the `frames` arrays: compression ratio, write and read speed.

    python benchmarks/codecs.py [--ped2 ../shared/datasets/ped2] [--video FILE]

Frames are decoded once (Ped2 test videos 01 and 03; the first 320 frames of a real fixed-camera
recording at ingest's default 480x852 RGB; a synthetic 720p clip), then written to a
fresh array per codec in 16-frame chunks, the way ingest writes them (several chunks per write),
and read back whole.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from vad.tasks.sources.datasets import discover
from vad.tasks.sources.ffmpeg_io import DecodeSpec, read_frames
from vad.tasks.sources.synthetic import SyntheticSpec, make_synthetic
from zarr.codecs import BloscCodec, ZstdCodec

REPEATS = 3
CODECS = {
    "none": None,
    "zstd-1": ZstdCodec(level=1),
    "zstd-3": ZstdCodec(level=3),
    "zstd-9": ZstdCodec(level=9),
    "zstd--3": ZstdCodec(level=-3),  # zstd's fast levels: negative, less compression for speed
    "zstd--7": ZstdCodec(level=-7),
    "blosc-lz4-1": BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle"),
    "blosc-lz4": BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"),
    "blosc-zstd-1": BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle"),
    "blosc-zstd-1-bitshuffle": BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle"),
}


def _decode(uri: str, spec: DecodeSpec, frame_files=None, limit: int | None = None) -> np.ndarray:
    batches, n = [], 0
    with read_frames(uri, spec, batch_frames=64, frame_files=frame_files) as reader:
        for batch in reader:
            batches.append(batch)
            n += len(batch)
            if limit is not None and n >= limit:
                break
    return np.concatenate(batches)[:limit]


def measure(name: str, frames: np.ndarray, work: Path) -> list[dict]:
    rows = []
    batch = 16 * max(1, (32 << 20) // (16 * frames[0].nbytes))
    for codec_name, codec in CODECS.items():
        path = work / f"{name}-{codec_name}.zarr"
        shutil.rmtree(path, ignore_errors=True)
        arr = zarr.create_array(
            str(path), shape=frames.shape, chunks=(16, *frames.shape[1:]), dtype="uint8",
            compressors=codec, config={"write_empty_chunks": True},
        )
        write = read = float("inf")
        for _ in range(REPEATS):  # best of a few: the machine has other work on its 2 cores
            t0 = time.perf_counter()
            for i in range(0, len(frames), batch):
                arr[i : i + batch] = frames[i : i + batch]
            write = min(write, time.perf_counter() - t0)
            t0 = time.perf_counter()
            back = arr[:]
            read = min(read, time.perf_counter() - t0)
        assert np.array_equal(back, frames)
        stored = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        rows.append({
            "frames": name, "codec": codec_name, "ratio": frames.nbytes / stored, "bytes_per_frame": stored / len(frames),
            "write_fps": len(frames) / write, "read_fps": len(frames) / read,
            "write_MBps": frames.nbytes / write / 1e6, "read_MBps": frames.nbytes / read / 1e6,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(__file__).resolve().parents[2] / "shared"
    parser.add_argument("--ped2", default=str(shared / "datasets" / "ped2"))
    parser.add_argument("--video", default=str(shared / "videos" / "intel_one-by-one-person-detection_768x432_h264.mp4"))
    args = parser.parse_args()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="vad-codecs-") as tmp:
        work = Path(tmp)
        if Path(args.ped2).is_dir():
            videos = {v.video_id: v for v in discover(args.ped2, "ucsd")}
            ped2 = np.concatenate([
                _decode(videos[v].uri, DecodeSpec(240, 360, 3), videos[v].frame_files) for v in ("Test001", "Test003")
            ])
            rows += measure("ped2 240x360 RGB", ped2, work)
            rows += measure("ped2 240x360 gray", ped2[..., :1].copy(), work)
        if Path(args.video).is_file():
            real = _decode(args.video, DecodeSpec(480, 852, 3), limit=320)
            rows += measure("real recording 480x852 RGB", real, work)
        synth = make_synthetic(work / "synth", SyntheticSpec(n_train=1, n_test=1, frames=100, height=720, width=1280))
        rows += measure("synthetic 720p RGB", _decode(synth[0].path, DecodeSpec(720, 1280, 3)), work)
    with pd.option_context("display.width", 200):
        print(pd.DataFrame(rows).round(2).to_string(index=False))


if __name__ == "__main__":
    main()
