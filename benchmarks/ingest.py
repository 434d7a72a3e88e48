"""Ingest speed against FFmpeg's own decode speed, on Ped2 and on a real fixed-camera recording
encoded as 1280x720 H.264 (one of ../shared/videos, scaled up and looped), optionally on a
synthetic 1280x720 video.

    python benchmarks/ingest.py [--ped2 ../shared/datasets/ped2] [--video FILE] [--loops 3] [--synthetic 20]
                                [--codecs zstd--3,zstd-1,blosc-lz4-1,none]

For each input it times (1) FFmpeg decoding to null, (2) FFmpeg decoding, scaling and converting
to the stored pixel format, to null (the work ingest asks of FFmpeg), and (3) our ingest into a
fresh clip store (decode + scene cuts + compression + writes), with one and with two videos at a
time (the ingest flow runs one task per video on a thread pool), for each codec, (2) again just
before each codec's ingests. The figure of merit is (3) / (2). Rows with codec "none" store frames
uncompressed, to separate the pipeline's own cost from the codec's. `ffmpeg_cpu_ms` and
`ingest_cpu_ms` are CPU milliseconds per frame (ours and FFmpeg's, user and system), and
`cpu_ratio` their ratio: what the speed ratio comes to when the machine is saturated. `read_cpu_ms`
and `read_fps` are those of ingest's decoder alone (`read_frames`: FFmpeg writing the frames into
a pipe and our reader filling the batches, nothing stored), timed just before each codec's ingests:
`ingest_cpu_ms - read_cpu_ms` is what storing costs (scene cuts, compression, writes). `load_avg`
is the machine's 1-minute load average when the row was measured.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import vad.storage._clipstore as clipstore
from vad.storage import ClipStore
from vad.tasks.sources.datasets import VideoSource, discover
from vad.tasks.sources.ffmpeg_io import DecodeSpec, ffmpeg_exe, numbered_pattern, probe, read_frames
from vad.tasks.sources.ingest import Preprocess, batch_frames, ingest_video
from vad.tasks.sources.synthetic import SyntheticSpec, make_synthetic
from zarr.codecs import BloscCodec, ZstdCodec


def _ffmpeg_null(source: VideoSource, scale: tuple[int, int] | None) -> None:
    if source.kind == "frames":
        pattern, start = numbered_pattern(source.frame_files)  # type: ignore[misc, arg-type]
        inp = ["-framerate", "25", "-start_number", str(start), "-f", "image2", "-i", pattern]
    else:
        inp = ["-i", source.uri]
    filters = ["-vf", f"scale={scale[1]}:{scale[0]}:flags=area,format=rgb24"] if scale else []
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", *inp, *filters, "-f", "null", "-"], check=True)


def _read_only(source: VideoSource, prep: Preprocess, size: tuple[int, int]) -> None:
    """Decode `source` as ingest does (same size, pixel format and batches) and store nothing."""
    spec = DecodeSpec(size[0], size[1], 1 if prep.gray else 3, prep.fps)
    frames = source.frame_files if source.kind == "frames" else None
    with read_frames(source.uri, spec, batch_frames=batch_frames(prep.chunk_frames, spec.frame_bytes),
                     frame_files=frames, reuse_buffers=True) as batches:
        for _ in batches:
            pass


def codec_label(codec) -> str:
    """'zstd-1', 'zstd--3' (level -3), 'blosc-lz4-1', or 'none' for uncompressed frames."""
    if codec is None:
        return "none"
    spec = codec.to_dict()
    conf = spec.get("configuration", {})
    if spec["name"] == "zstd":
        return f"zstd-{conf['level']}"
    if spec["name"] == "blosc":
        return f"blosc-{conf['cname']}-{conf['clevel']}"
    return str(spec["name"])


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (FFmpeg), user and system."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(fn, items, workers: int = 1) -> tuple[float, float]:
    """Wall seconds and CPU seconds (ours and FFmpeg's) of `fn` over `items`."""
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fn, items))
    return time.perf_counter() - t0, _cpu_seconds() - cpu0


def parse_codec(label: str):
    """The frames codec a `codec_label` names ('none': uncompressed)."""
    if label == "none":
        return None
    if match := re.fullmatch(r"zstd-(-?\d+)", label):
        return ZstdCodec(level=int(match[1]))
    if match := re.fullmatch(r"blosc-(\w+)-(\d)", label):
        return BloscCodec(cname=match[1], clevel=int(match[2]), shuffle="noshuffle")
    raise SystemExit(f"unknown codec {label!r} (zstd-LEVEL, blosc-CNAME-CLEVEL or none)")


def bench(
    name: str, sources: list[VideoSource], prep: Preprocess, frames: int, out: Path, codecs: list
) -> list[dict]:
    """Rows for ingesting `sources` with each codec (None: uncompressed, the pipeline's own cost),
    FFmpeg alone timed just before each codec's ingests."""
    first = sources[0].frame_files[0] if sources[0].kind == "frames" else sources[0].uri
    info = probe(first, image_sequence=sources[0].kind == "frames")
    size = prep.output_size(info.height, info.width)
    decode, _ = _timed(lambda s: _ffmpeg_null(s, None), sources)
    rows = []
    default = clipstore.FRAMES_CODEC
    for codec in codecs:
        scale, scale_cpu = _timed(lambda s: _ffmpeg_null(s, size), sources)
        read, read_cpu = _timed(lambda s: _read_only(s, prep, size), sources)
        for workers in (1, 2):
            url = str(out / f"{name}-{workers}-{codec_label(codec)}.zarr")
            clipstore.FRAMES_CODEC = codec
            ClipStore.open_or_create(url, dataset=name)  # once, before the writers start, as the ingest flow does
            try:
                seconds, cpu = _timed(lambda s: ingest_video(url, s, prep, dataset=name), sources, workers)
            finally:
                clipstore.FRAMES_CODEC = default
            stored = sum(f.stat().st_size for f in Path(url).rglob("*") if f.is_file())
            shutil.rmtree(url)
            raw = frames * size[0] * size[1] * (1 if prep.gray else 3)
            rows.append({
                "input": name, "codec": codec_label(codec), "videos": len(sources), "frames": frames,
                "stored_size": f"{size[0]}x{size[1]}",
                "ingest_workers": workers, "ffmpeg_decode_fps": frames / decode, "ffmpeg_decode_scale_fps": frames / scale,
                "ingest_fps": frames / seconds, "ingest_vs_ffmpeg": (frames / seconds) / (frames / scale),
                "compression_ratio": raw / stored, "bytes_per_frame": stored / frames,
                # CPU per frame: on a saturated machine the wall ratio follows the CPU ratio
                "ffmpeg_cpu_ms": 1000 * scale_cpu / frames, "ingest_cpu_ms": 1000 * cpu / frames,
                "cpu_ratio": scale_cpu / cpu, "read_fps": frames / read, "read_cpu_ms": 1000 * read_cpu / frames,
                "load_avg": os.getloadavg()[0],
            })
    return rows


def real_720p(video: Path, loops: int, out: Path) -> Path:
    """`video` scaled to 1280x720 and looped `loops` times, as H.264 (libx264, CRF 23): a camera's file."""
    path = out / "real720.mp4"
    subprocess.run([
        ffmpeg_exe(), "-nostdin", "-v", "error", "-stream_loop", str(loops - 1), "-i", str(video),
        "-vf", "scale=1280:720", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-an", "-y", str(path),
    ], check=True)
    return path


def main() -> None:
    shared = Path(__file__).resolve().parents[2] / "shared"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ped2", default=str(shared / "datasets" / "ped2"))
    parser.add_argument("--video", default=str(shared / "videos" / "intel_one-by-one-person-detection_768x432_h264.mp4"),
                        help="a real recording, re-encoded as 1280x720 H.264")
    parser.add_argument("--loops", type=int, default=3, help="times the recording is looped")
    parser.add_argument("--synthetic", type=int, default=0, metavar="SECONDS", help="also a synthetic 720p video this long")
    parser.add_argument("--codecs", default=f"{codec_label(clipstore.FRAMES_CODEC)},none",
                        help="frame codecs to ingest with, comma-separated (default: the store's default, and none)")
    parser.add_argument("--out", default="benchmarks/results/ingest.parquet")
    args = parser.parse_args()
    codecs = [parse_codec(label) for label in args.codecs.split(",")]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="vad-bench-") as tmp:
        work = Path(tmp)
        if Path(args.ped2).is_dir():
            videos = discover(args.ped2, "ucsd")
            rows += bench("ped2", videos, Preprocess(), 4560, work, codecs)
        else:
            print(f"skipping Ped2: {args.ped2} not found")
        if Path(args.video).is_file():
            path = real_720p(Path(args.video), args.loops, work)
            video = VideoSource("real720", "train", str(path), "file")
            frames = ingest_video(str(work / "count.zarr"), video, Preprocess(gray=True, size=(72, 128)), dataset="n").frames
            rows += bench("real-720p", [video], Preprocess(), frames, work, codecs)
        else:
            print(f"skipping the real recording: {args.video} not found")
        if args.synthetic:
            spec = SyntheticSpec(n_train=1, n_test=1, frames=25 * args.synthetic, height=720, width=1280, objects=4)
            synth = make_synthetic(work / "synth720", spec)
            video = VideoSource("synth720", "train", synth[0].path, "file")
            rows += bench("synthetic-720p", [video], Preprocess(), spec.frames, work, codecs)
    table = pd.DataFrame(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(args.out)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(2).to_string(index=False))
    print(f"\n{os.cpu_count()} cores; results saved to {args.out}")


if __name__ == "__main__":
    main()
