"""A deterministic synthetic dataset: shapes moving across a textured background, written as
real H.264 video files through FFmpeg, with anomalies at known frames.

Normal footage: a few squares drift left to right at a steady speed, wrapping around. Each test
video has one anomalous event over a known frame range: an object moving too fast, one moving
against the flow, or a foreign shape (a dark disc, distinct from the bright squares in gray as in
colour) crossing the scene. The output is the generic
folder layout (`train/*.mp4`, `test/*.mp4`, `labels.csv`) that `vad ingest` reads.
"""

from __future__ import annotations

import csv
import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from vad.tasks.sources.ffmpeg_io import ffmpeg_exe

from vad.errors import FFmpegError, ParameterError

ANOMALY_KINDS = ("too_fast", "against_flow", "foreign_shape")


@dataclass(frozen=True)
class SyntheticSpec:
    """Size and content of a synthetic dataset; the same spec and seed give the same pixels."""

    n_train: int = 6
    n_test: int = 6
    frames: int = 150
    height: int = 120
    width: int = 160
    fps: int = 25
    objects: int = 3
    speed: float = 1.5  # pixels per frame of normal objects
    seed: int = 0

    def __post_init__(self) -> None:
        if self.height % 2 or self.width % 2 or min(self.height, self.width) < 32:
            raise ParameterError(f"synthetic size must be even and at least 32x32, got {self.height}x{self.width}")
        if self.frames < 20:
            raise ParameterError(f"synthetic videos need at least 20 frames, got {self.frames}")
        if self.n_train < 1 or self.n_test < 1:
            raise ParameterError("a synthetic dataset needs at least one train and one test video")


@dataclass(frozen=True)
class SyntheticVideo:
    video_id: str
    split: str
    path: str
    anomaly: str | None
    anomalous_frames: tuple[int, int] | None  # half-open [start, stop)


def make_synthetic(out_dir: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> list[SyntheticVideo]:
    """Write the dataset under `out_dir` (which must be empty or absent) and return its videos."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ParameterError(f"{out}: folder is not empty; choose a new folder for the synthetic dataset")
    rng = np.random.default_rng(spec.seed)
    background = _background(spec, rng)
    # One camera, one kind of traffic: every video's squares share these colours (only their starting
    # positions differ), so a score difference between videos means content, not a new palette.
    colours = rng.uniform(160, 230, size=(spec.objects, 3))
    videos: list[SyntheticVideo] = []
    for i in range(spec.n_train):
        path = out / "train" / f"normal_{i:02d}.mp4"
        _write_video(path, _render(spec, background, colours, rng, anomaly=None, window=None), spec.fps)
        videos.append(SyntheticVideo(path.stem, "train", str(path), None, None))
    for i in range(spec.n_test):
        kind = ANOMALY_KINDS[i % len(ANOMALY_KINDS)]
        start = int(rng.integers(spec.frames // 5, spec.frames // 2))
        stop = min(spec.frames, start + int(rng.integers(spec.frames // 5, spec.frames // 3)))
        path = out / "test" / f"test_{i:02d}.mp4"
        _write_video(path, _render(spec, background, colours, rng, anomaly=kind, window=(start, stop)), spec.fps)
        videos.append(SyntheticVideo(path.stem, "test", str(path), kind, (start, stop)))
    _write_labels(out / "labels.csv", videos, spec.frames)
    manifest = {"generator": "vad.tasks.sources.synthetic", "spec": asdict(spec), "videos": [asdict(v) for v in videos]}
    (out / "synthetic.json").write_text(json.dumps(manifest, indent=2))
    return videos


def _background(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """A smooth random texture (a coarse noise grid, upsampled), (H, W, 3) float in [40, 120]."""
    coarse = rng.uniform(40, 120, size=(spec.height // 8 + 2, spec.width // 8 + 2, 3))
    ys = np.linspace(0, coarse.shape[0] - 1.001, spec.height)
    xs = np.linspace(0, coarse.shape[1] - 1.001, spec.width)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _render(
    spec: SyntheticSpec, background: np.ndarray, colours: np.ndarray, rng: np.random.Generator, *, anomaly: str | None,
    window: tuple[int, int] | None,
) -> np.ndarray:
    """All frames of one video, (N, H, W, 3) uint8."""
    h, w = spec.height, spec.width
    side = max(6, h // 10)
    lanes = np.linspace(side, h - 2 * side, spec.objects).astype(int)
    x0 = rng.uniform(0, w, size=spec.objects)
    frames = np.empty((spec.frames, h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for t in range(spec.frames):
        img = background.copy()
        for k in range(spec.objects):
            x = (x0[k] + spec.speed * t) % (w + side) - side
            img[lanes[k] : lanes[k] + side, max(0, int(x)) : max(0, int(x) + side)] = colours[k]
        if anomaly is not None and window is not None and window[0] <= t < window[1]:
            # The anomalous object crosses the whole frame during its window, wherever it starts.
            progress = (t - window[0]) / max(1, window[1] - window[0] - 1)
            lane = h // 2 - side // 2
            if anomaly == "too_fast":
                x = (progress * 4 % 1) * (w + side) - side  # about 4 crossings: several times normal speed
                img[lane : lane + side, max(0, int(x)) : max(0, int(x) + side)] = (220, 220, 90)
            elif anomaly == "against_flow":
                x = (1 - progress) * (w + side) - side
                img[lane : lane + side, max(0, int(x)) : max(0, int(x) + side)] = (200, 200, 200)
            else:
                cx, cy, r = progress * (w + 2 * side) - side, h / 2, side * 1.2
                img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = (15, 15, 60)
        noise = rng.normal(0, 2.0, size=img.shape)  # sensor noise, so frames are never identical
        frames[t] = np.clip(img + noise, 0, 255).astype(np.uint8)
    return frames


def _write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """Encode (N, H, W, 3) frames as near-lossless H.264 MP4 through FFmpeg."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n, h, w, _ = frames.shape
    cmd = [
        ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
        "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:", "-c:v", "libx264", "-preset", "veryfast",
        "-crf", "12", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path),
    ]
    proc = subprocess.run(cmd, input=frames.tobytes(), capture_output=True, check=False)
    if proc.returncode != 0:
        raise FFmpegError(str(path), "encoding the synthetic video failed", cmd=cmd, stderr=proc.stderr.decode(errors="replace"))


def _write_labels(path: Path, videos: list[SyntheticVideo], n_frames: int) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["video", "frame", "label"])
        for v in videos:
            if v.split != "test":
                continue
            start, stop = v.anomalous_frames  # type: ignore[misc]
            writer.writerows((v.video_id, f, int(start <= f < stop)) for f in range(n_frames))
