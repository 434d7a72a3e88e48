"""Decoding through FFmpeg: probe a source, then stream its frames as uint8 arrays in chunks.

The binary is imageio-ffmpeg's (a pinned static build installed by pip, so every machine decodes
with the same FFmpeg) unless `VAD_FFMPEG` names another. That build has no ffprobe, so `probe`
reads the stream header FFmpeg prints for `ffmpeg -i`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ffmpeg
import numpy as np

from tasks.errors import FFmpegError, NotFoundError

_VIDEO_LINE = re.compile(r"Stream #\S+.*?: Video: (?P<codec>\w+)(?P<rest>.*)")
_SIZE = re.compile(r"\b(\d{1,5})x(\d{1,5})\b")
_FPS = re.compile(r"([\d.]+)(k?) (?:fps|tbr)")


def ffmpeg_exe() -> str:
    """Path of the FFmpeg binary: `$VAD_FFMPEG`, else imageio-ffmpeg's bundled build."""
    exe = os.environ.get("VAD_FFMPEG")
    if exe:
        return exe
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class ProbeInfo:
    """What FFmpeg reports about a source's first video stream."""

    width: int
    height: int
    fps: float | None
    codec: str


@dataclass(frozen=True)
class DecodeSpec:
    """How frames leave FFmpeg: output size (H, W), channels (1 gray / 3 RGB), frame rate or None."""

    height: int
    width: int
    channels: int
    fps: float | None = None

    @property
    def frame_bytes(self) -> int:
        return self.height * self.width * self.channels


def probe(path: str | Path, *, image_sequence: bool = False) -> ProbeInfo:
    """Size, frame rate and codec of a video file (or of one image of a frame folder)."""
    path = str(path)
    if not Path(path).exists():
        raise NotFoundError(f"{path}: no such file")
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise FFmpegError(path, "the file is empty")
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path]
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", check=False)
    for line in proc.stderr.splitlines():
        match = _VIDEO_LINE.search(line)
        if match:
            size = _SIZE.search(match["rest"])
            if size is None:
                break
            fps = _FPS.search(match["rest"])
            rate = float(fps[1]) * (1000 if fps[2] else 1) if fps and not image_sequence else None
            return ProbeInfo(int(size[1]), int(size[2]), rate, match["codec"])
    raise FFmpegError(path, "not a readable video (no video stream found)", cmd=cmd, stderr=proc.stderr)


def read_frames(
    uri: str, spec: DecodeSpec, *, batch_frames: int, frame_files: tuple[str, ...] | None = None
) -> Iterator[np.ndarray]:
    """Decode `uri` (a video file, or the ordered `frame_files` of a frame folder) in batches.

    Yields arrays of shape (n, H, W, C) uint8 with n == batch_frames except for the last one, so
    memory stays at a few batches whatever the video's length. A reader thread keeps FFmpeg
    decoding the next batches while the caller stores this one. Raises `FFmpegError` (naming the
    file and quoting FFmpeg) when FFmpeg fails, reports a decoding error (a truncated or corrupt
    file still decodes partly, so any error FFmpeg prints counts), or yields no frame at all.
    """
    with _input(uri, frame_files) as stream:
        cmd = _command(stream, spec)
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            raise FFmpegError(uri, f"cannot start FFmpeg ({exc})", cmd=cmd, transient=True) from exc
        errors: list[bytes] = []
        drain = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
        drain.start()
        batches: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=2)
        stop = threading.Event()
        reader = threading.Thread(target=_pump, args=(proc.stdout, spec, batch_frames, batches, stop), daemon=True)
        reader.start()
        n_frames = 0
        try:
            while (batch := batches.get()) is not None:
                n_frames += len(batch)
                yield batch
        finally:
            stop.set()
            if proc.poll() is None and proc.stdout is not None:
                proc.stdout.close()  # the consumer stopped early: let FFmpeg exit on a broken pipe
            while reader.is_alive():  # unblock a reader waiting on a full queue
                with contextlib.suppress(queue.Empty):
                    batches.get(timeout=0.05)
            returncode = proc.wait()
            drain.join()
        stderr = b"".join(errors).decode(errors="replace")
        if returncode < 0:
            raise FFmpegError(uri, f"FFmpeg was killed by signal {-returncode}", cmd=cmd, stderr=stderr, transient=True)
        if returncode != 0:
            raise FFmpegError(uri, f"FFmpeg failed (exit code {returncode})", cmd=cmd, stderr=stderr)
        if stderr.strip():
            raise FFmpegError(uri, "FFmpeg reported decoding errors (truncated or corrupt file?)", cmd=cmd, stderr=stderr)
        if n_frames == 0:
            raise FFmpegError(uri, "no frames could be decoded (empty or not a video)", cmd=cmd, stderr=stderr)


def _pump(pipe, spec: DecodeSpec, batch_frames: int, out: queue.Queue, stop: threading.Event) -> None:
    """Reader thread: fill batches from FFmpeg's stdout until it ends; None marks the end."""
    try:
        while not stop.is_set():
            buf = np.empty((batch_frames, spec.height, spec.width, spec.channels), dtype=np.uint8)
            try:
                got = _read_into(pipe, memoryview(buf).cast("B"))
            except (OSError, ValueError):  # the pipe was closed under us: the consumer stopped
                break
            n = got // spec.frame_bytes  # a torn last frame only happens when FFmpeg fails
            if n:
                out.put(buf[:n])
            if n < batch_frames:
                break
    finally:
        out.put(None)


def _read_into(pipe, view: memoryview) -> int:
    """Fill `view` from `pipe` until it is full or the pipe ends; return the bytes read."""
    total = 0
    while total < len(view):
        n = pipe.readinto(view[total:])
        if not n:
            break
        total += n
    return total


def _command(stream, spec: DecodeSpec) -> list[str]:
    if spec.fps is not None:
        stream = stream.filter("fps", fps=spec.fps)
    stream = stream.filter("scale", spec.width, spec.height, flags="area")
    pix_fmt = "gray" if spec.channels == 1 else "rgb24"
    out = stream.output("pipe:", format="rawvideo", pix_fmt=pix_fmt).global_args("-nostdin", "-v", "error")
    return out.compile(cmd=ffmpeg_exe())


_NUMBERED = re.compile(r"^(?P<prefix>.*?)(?P<number>\d+)(?P<suffix>\.[A-Za-z]+)$")


def numbered_pattern(frame_files: tuple[str, ...]) -> tuple[str, int] | None:
    """An image2 pattern and start number when the files are `<prefix><number><ext>`, numbered
    consecutively with one digit width in one folder (e.g. 000.jpg ... 179.jpg); else None."""
    first = _NUMBERED.match(os.path.basename(frame_files[0]))
    if first is None:
        return None
    folder, width, start = os.path.dirname(frame_files[0]), len(first["number"]), int(first["number"])
    for i, path in enumerate(frame_files):
        match = _NUMBERED.match(os.path.basename(path))
        if (
            match is None or os.path.dirname(path) != folder or len(match["number"]) != width
            or int(match["number"]) != start + i or match["prefix"] != first["prefix"]
            or match["suffix"] != first["suffix"]
        ):
            return None
    escaped = (folder + os.sep + first["prefix"]).replace("%", "%%")
    return f"{escaped}%0{width}d{first['suffix']}", start


@contextlib.contextmanager
def _input(uri: str, frame_files: tuple[str, ...] | None):
    """An ffmpeg-python input for a video file or for a frame folder (through FFmpeg's image2)."""
    if frame_files is None:
        if not Path(uri).is_file():
            raise NotFoundError(f"{uri}: no such video file")
        yield ffmpeg.input(uri)
        return
    numbered = numbered_pattern(frame_files)
    if numbered is not None:
        yield ffmpeg.input(numbered[0], framerate=25, start_number=numbered[1], f="image2")
        return
    # Freely named frames (frame1.png ... frame10.png): link them in natural order under
    # sequential names, since image2 reads a numbered pattern.
    suffix = Path(frame_files[0]).suffix.lower()
    with tempfile.TemporaryDirectory(prefix="vad-frames-") as tmp:
        for i, name in enumerate(frame_files):
            os.symlink(os.path.abspath(name), os.path.join(tmp, f"{i:08d}{suffix}"))
        yield ffmpeg.input(os.path.join(tmp, f"%08d{suffix}"), framerate=25, start_number=0, f="image2")
