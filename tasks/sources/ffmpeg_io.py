"""Decoding through FFmpeg: probe a source, then stream its frames as uint8 arrays in chunks.

The binary is imageio-ffmpeg's (a pinned static build installed by pip, so every machine decodes
with the same FFmpeg) unless `VAD_FFMPEG` names another. That build has no ffprobe, so `probe`
reads the stream header FFmpeg prints for `ffmpeg -i`.

Frames leave FFmpeg in decode order, each once (its passthrough frame-rate mode), unless a frame
rate is asked for: FFmpeg's default for raw output is a constant rate, which duplicates frames of
a stream that starts late or has gaps and so shifts every later frame index. Their timestamps come
back through FFmpeg's per-frame encoder statistics file (`-stats_enc_pre`, FFmpeg 6.1 and later).

No FFmpeg process can hang a run: `probe` has a fixed timeout, a decode is stopped when FFmpeg
sends no byte for `stall_timeout` seconds or spends more than `time_limit` seconds in all (see
`decode_time_limit`), and every process is killed when its reader stops early, raises, or the
Python process exits (an atexit hook; on Linux also the parent-death signal, which covers SIGKILL).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import itertools
import os
import queue
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg
import numpy as np

from vad.errors import FFmpegError, NotFoundError

_VIDEO_LINE = re.compile(r"Stream #\S+.*?: Video: (?P<codec>\w+)(?P<rest>.*)")
_SIZE = re.compile(r"\b(\d{1,5})x(\d{1,5})\b")
_FPS = re.compile(r"([\d.]+)(k?) (?:fps|tbr)")
_DURATION = re.compile(r"Duration: (?:(\d+):(\d+):([\d.]+)|N/A)(?:, start: (-?[\d.]+))?")
_VERSION = re.compile(r"ffmpeg version n?(\d+)\.(\d+)")

# `ffmpeg -i` reads at most its probe size (5 MB) and analyse duration (5 s of stream): well under a
# second from a local disk, and 60 s still allows that read at 85 kB/s from a slow mount.
PROBE_TIMEOUT_S = 60.0
# A healthy FFmpeg sends a frame every few milliseconds (1080p H.264 decodes at 100+ frames/s on one
# core), so a minute without a byte is a stalled source, not a slow decode. Time FFmpeg waits on us
# (a full pipe while the store writes) does not count.
STALL_TIMEOUT_S = 60.0
# All of one decode may take a floor plus 10 s of FFmpeg's time per second of video: 10x slower than
# real time is far below any software decode of camera footage at the sizes stored, and a source
# that trickles (a mount delivering bytes, slowly) ends instead of running all night.
TIME_LIMIT_FLOOR_S = 120.0
TIME_LIMIT_FACTOR = 10.0
# Without a known duration, one is estimated from the file size at 256 kbit/s, a bitrate below any
# camera stream's, so the estimate errs long.
MIN_BYTES_PER_S = 32_000
KILL_WAIT_S = 5.0  # how long a killed FFmpeg gets to exit before we stop waiting for it
# A decode that printed messages but exited 0 is still a decode failure when it gave fewer frames
# than the source should have, less this slack (a container duration rounded up, a last frame
# dropped): a truncated file loses far more. Its messages are kept (at most this many lines).
MISSING_FRAMES_SLACK = 0.02
MAX_WARNINGS = 5
PIPE_BYTES = 1 << 20  # FFmpeg's stdout pipe, where the system allows (Linux: up to /proc/sys/fs/pipe-max-size)
QUEUED_BATCHES = 2  # batches the reader thread keeps ready ahead of the caller
# With `reuse_buffers`, the reader cycles through this many batch buffers: the caller's, the queued
# ones and the one being filled; the caller's is refilled only once it has asked for the next.
BUFFER_RING = QUEUED_BATCHES + 2


def ffmpeg_exe() -> str:
    """Path of the FFmpeg binary: `$VAD_FFMPEG`, else imageio-ffmpeg's bundled build."""
    exe = os.environ.get("VAD_FFMPEG")
    if exe:
        return exe
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.lru_cache(maxsize=8)
def _version_of(exe: str) -> tuple[int, int] | None:
    proc = _run([exe, "-hide_banner", "-version"], exe, timeout=PROBE_TIMEOUT_S)
    match = _VERSION.search(proc.stdout)
    return (int(match[1]), int(match[2])) if match else None


def ffmpeg_version() -> tuple[int, int] | None:
    """(major, minor) of the FFmpeg binary; None for a build that does not say (a git snapshot),
    which is taken to be recent."""
    return _version_of(ffmpeg_exe())


def _at_least(major: int, minor: int) -> bool:
    version = ffmpeg_version()
    return version is None or version >= (major, minor)


@dataclass(frozen=True)
class ProbeInfo:
    """What FFmpeg reports about a source's first video stream, and the file's start time and
    duration in seconds (`start` 0 and `duration` None where FFmpeg reports none)."""

    width: int
    height: int
    fps: float | None
    codec: str
    start: float = 0.0
    duration: float | None = None


@dataclass(frozen=True)
class DecodeSpec:
    """How frames leave FFmpeg: output size (H, W), channels (1 gray / 3 RGB), frame rate or None
    (None: every decoded frame once, with its own timestamp)."""

    height: int
    width: int
    channels: int
    fps: float | None = None

    @property
    def frame_bytes(self) -> int:
        return self.height * self.width * self.channels


@dataclass(frozen=True)
class FrameTimes:
    """Presentation time of each frame FFmpeg sent, in ticks of `time_base` seconds, counted from
    the start of the file (FFmpeg's zero; add the probe's `start` for the source's own clock)."""

    time_base: Fraction
    pts: np.ndarray  # (N,) int64


def decode_time_limit(*, duration: float | None, size: int) -> float:
    """Seconds of FFmpeg's time one decode may take: a floor plus `TIME_LIMIT_FACTOR` per second of
    video, the duration estimated from `size` bytes when FFmpeg reports none."""
    seconds = duration if duration is not None else size / MIN_BYTES_PER_S
    return TIME_LIMIT_FLOOR_S + TIME_LIMIT_FACTOR * max(0.0, seconds)


def probe(path: str | Path, *, image_sequence: bool = False, timeout: float = PROBE_TIMEOUT_S) -> ProbeInfo:
    """Size, frame rate and codec of a video file (or of one image of a frame folder), and the
    file's start time and duration. FFmpeg gets `timeout` seconds to answer."""
    path = str(path)
    if not Path(path).exists():
        raise NotFoundError(f"{path}: no such file")
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise FFmpegError(path, "the file is empty")
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path]
    stderr = _run(cmd, path, timeout=timeout).stderr
    start, duration = 0.0, None
    timing = _DURATION.search(stderr)
    if timing and not image_sequence:
        if timing[1] is not None:
            duration = int(timing[1]) * 3600 + int(timing[2]) * 60 + float(timing[3])
        start = float(timing[4] or 0.0)
    for line in stderr.splitlines():
        match = _VIDEO_LINE.search(line)
        if match:
            size = _SIZE.search(match["rest"])
            if size is None:
                break
            fps = _FPS.search(match["rest"])
            rate = float(fps[1]) * (1000 if fps[2] else 1) if fps and not image_sequence else None
            return ProbeInfo(int(size[1]), int(size[2]), rate, match["codec"], start, duration)
    raise FFmpegError(path, "not a readable video (no video stream found)", cmd=cmd, stderr=stderr)


def read_frames(
    uri: str, spec: DecodeSpec, *, batch_frames: int, frame_files: tuple[str, ...] | None = None,
    stall_timeout: float = STALL_TIMEOUT_S, time_limit: float | None = None, expected_frames: int | None = None,
    reuse_buffers: bool = False,
) -> FrameReader:
    """Decode `uri` (a video file, or the ordered `frame_files` of a frame folder) in batches.

    Iterating yields arrays of shape (n, H, W, C) uint8 with n == batch_frames except for the last
    one, so memory stays at a few batches whatever the video's length; afterwards the reader's
    `times` holds the frames' timestamps (None when this FFmpeg cannot report them) and `warnings`
    what FFmpeg printed on a decode that succeeded. A reader thread keeps FFmpeg decoding the next
    batches while the caller stores this one; use the reader as a context manager (or `close()` it)
    so FFmpeg is stopped at once when the caller raises. Raises `FFmpegError` (naming the file and
    quoting FFmpeg) when FFmpeg fails (a non-zero exit), yields no frame at all, or runs out of
    time: no byte for `stall_timeout` s, or more than `time_limit` s in all (default:
    `decode_time_limit` of the input's size); those two are transient, worth a retry. A decode that
    exits 0 but printed messages (a truncated or corrupt file still decodes partly) fails too when
    it gave fewer than `expected_frames` (less `MISSING_FRAMES_SLACK`) or that count is unknown;
    else the messages were warnings, such as the muxer's "non monotonically increasing dts".

    `reuse_buffers=True` recycles a few batch buffers, so a batch stays valid only until the next
    one is asked for (copy what you keep): fresh memory for every batch costs the kernel a zeroed
    page per 4 KiB written (measured: 0.3 ms less of our CPU per 480x852 RGB frame with the ring).
    """
    if time_limit is None:
        sizes = [_size(p) for p in (frame_files or (uri,))]
        time_limit = decode_time_limit(duration=None, size=sum(sizes))
    return FrameReader(uri, spec, batch_frames, frame_files, stall_timeout, time_limit, expected_frames, reuse_buffers)


class FrameReader:
    """The batches of one decode (see `read_frames`); `close()` (or leaving a `with` block) stops
    FFmpeg early and waits for it to exit."""

    def __init__(
        self, uri: str, spec: DecodeSpec, batch_frames: int, frame_files: tuple[str, ...] | None,
        stall_timeout: float, time_limit: float, expected_frames: int | None = None, reuse_buffers: bool = False,
    ) -> None:
        self.uri, self.spec, self.times, self.expected_frames = uri, spec, None, expected_frames
        self.reuse_buffers = reuse_buffers
        self.warnings: list[str] = []
        self._batches = self._decode(batch_frames, frame_files, _Clock(stall_timeout, time_limit))

    def __iter__(self) -> FrameReader:
        return self

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __next__(self) -> np.ndarray:
        return next(self._batches)

    def close(self) -> None:
        self._batches.close()

    def _decode(self, batch_frames: int, frame_files: tuple[str, ...] | None, clock: _Clock) -> Iterator[np.ndarray]:
        uri, spec = self.uri, self.spec
        with _input(uri, frame_files) as stream, tempfile.TemporaryDirectory(prefix="vad-decode-") as tmp:
            stats = os.path.join(tmp, "frames.txt") if _at_least(6, 1) else None
            cmd = _command(stream, spec, stats)
            try:
                proc = _spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            except OSError as exc:
                raise FFmpegError(uri, f"cannot start FFmpeg ({exc})", cmd=cmd, transient=True) from exc
            _widen_pipe(proc.stdout.fileno())  # type: ignore[union-attr]
            errors: list[bytes] = []
            drain = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
            drain.start()
            batches: queue.Queue[np.ndarray | _OutOfTime | None] = queue.Queue(maxsize=QUEUED_BATCHES)
            stop = threading.Event()
            reader = threading.Thread(
                target=_pump, args=(proc.stdout.fileno(), spec, batch_frames, batches, stop, clock, self.reuse_buffers),  # type: ignore[union-attr]
                daemon=True,
            )
            reader.start()
            n_frames, late, ended = 0, None, False
            try:
                while (batch := batches.get()) is not None:
                    if isinstance(batch, _OutOfTime):
                        late = batch
                        break
                    n_frames += len(batch)
                    yield batch
                ended = late is None
            finally:
                stop.set()
                if not ended:  # stopped early, raised, or out of time: FFmpeg must not outlive us
                    _kill(proc)
                while reader.is_alive():  # unblock a reader waiting on a full queue
                    with contextlib.suppress(queue.Empty):
                        batches.get(timeout=0.05)
                returncode = _wait(proc)
                drain.join(timeout=KILL_WAIT_S)
            stderr = b"".join(errors).decode(errors="replace")
            if late is not None:
                raise FFmpegError(uri, f"{late}; FFmpeg was stopped", cmd=cmd, stderr=stderr, transient=True)
            if returncode is None:
                raise FFmpegError(uri, "FFmpeg did not exit after it was killed", cmd=cmd, transient=True)
            if returncode < 0:
                raise FFmpegError(uri, f"FFmpeg was killed by signal {-returncode}", cmd=cmd, stderr=stderr, transient=True)
            if returncode != 0:
                raise FFmpegError(uri, f"FFmpeg failed (exit code {returncode})", cmd=cmd, stderr=stderr)
            if n_frames == 0:
                raise FFmpegError(uri, "no frames could be decoded (empty or not a video)", cmd=cmd, stderr=stderr)
            if stderr.strip():
                expected = self.expected_frames
                if expected is None or n_frames < expected - max(2, MISSING_FRAMES_SLACK * expected):
                    got = f" ({n_frames} of about {expected} frames)" if expected is not None else ""
                    raise FFmpegError(uri, f"FFmpeg reported decoding errors{got} (truncated or corrupt file?)",
                                      cmd=cmd, stderr=stderr)
                lines = [line.strip()[:200] for line in stderr.splitlines() if line.strip()]
                self.warnings = list(dict.fromkeys(lines))[:MAX_WARNINGS]
            self.times = _read_stats(stats, n_frames) if stats else None


class _OutOfTime(Exception):
    """The reader thread gave up on FFmpeg (the message says which limit)."""


class _Stopped(Exception):
    """The consumer stopped: the reader thread ends."""


@dataclass
class _Clock:
    """Time spent waiting for FFmpeg's bytes: since the last byte, and in all."""

    stall: float
    limit: float
    used: float = 0.0

    def wait(self, poller: select.poll, stop: threading.Event) -> None:
        """Return when FFmpeg's stdout has bytes (or has closed); raise `_OutOfTime` past a limit."""
        start = time.monotonic()
        while not poller.poll(100):  # wake every 0.1 s to notice a stop
            if stop.is_set():
                raise _Stopped
            waited = time.monotonic() - start
            if waited >= self.stall:
                raise _OutOfTime(f"no frame from FFmpeg for {self.stall:g} s (a stalled source?)")
            if self.used + waited >= self.limit:
                raise _OutOfTime(f"decoding took more than its limit of {self.limit:g} s")
        self.used += time.monotonic() - start


def _pump(
    fd: int, spec: DecodeSpec, batch_frames: int, out: queue.Queue, stop: threading.Event, clock: _Clock,
    reuse: bool = False,
) -> None:
    """Reader thread: fill batches from FFmpeg's stdout until it ends; None marks the end. With
    `reuse`, batch i is read into buffer i % BUFFER_RING (see `read_frames`)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    shape = (batch_frames, spec.height, spec.width, spec.channels)
    ring: list[np.ndarray] = []
    try:
        for i in itertools.count():
            if stop.is_set():
                break
            if len(ring) == BUFFER_RING:
                buf = ring[i % BUFFER_RING]
            else:
                buf = np.empty(shape, dtype=np.uint8)
                if reuse:
                    ring.append(buf)
            got = _read_into(fd, memoryview(buf).cast("B"), poller, stop, clock)
            n = got // spec.frame_bytes  # a torn last frame only happens when FFmpeg fails
            if n:
                out.put(buf[:n])
            if n < batch_frames:
                break
    except _OutOfTime as exc:
        out.put(exc)
    except (_Stopped, OSError, ValueError):  # the consumer stopped, or the pipe was closed under us
        pass
    finally:
        out.put(None)


def _widen_pipe(fd: int) -> None:
    """Grow FFmpeg's stdout pipe to PIPE_BYTES where the system allows: a 64 KiB pipe takes about 20
    wakeups of both processes per 480-row RGB frame; a 1 MiB one takes two."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or above /proc/sys/fs/pipe-max-size
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def _read_into(fd: int, view: memoryview, poller: select.poll, stop: threading.Event, clock: _Clock) -> int:
    """Fill `view` from `fd` until it is full or the pipe ends; return the bytes read."""
    total = 0
    while total < len(view):
        clock.wait(poller, stop)
        n = os.readv(fd, [view[total:]])
        if not n:
            break
        total += n
    return total


def _read_stats(path: str, n_frames: int) -> FrameTimes | None:
    """The timestamps FFmpeg wrote for each frame (`<pts> <time base>` per line); None when they do
    not add up to the frames received or a frame had none."""
    try:
        rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError:
        return None
    if len(rows) != n_frames or len({tb for _, tb in rows}) != 1:
        return None
    try:
        return FrameTimes(Fraction(rows[0][1]), np.array([int(pts) for pts, _ in rows], dtype=np.int64))
    except ValueError:  # "N/A": a stream without timestamps
        return None


def _command(stream, spec: DecodeSpec, stats: str | None) -> list[str]:
    if spec.fps is not None:
        stream = stream.filter("fps", fps=spec.fps)
    stream = stream.filter("scale", spec.width, spec.height, flags="area")
    options: dict[str, str] = {"format": "rawvideo", "pix_fmt": "gray" if spec.channels == 1 else "rgb24"}
    if spec.fps is None:  # every decoded frame once, never duplicated or dropped to make a constant rate
        options["fps_mode" if _at_least(5, 1) else "vsync"] = "passthrough"
    if stats is not None:
        # Passthrough: each frame's own timestamp as decoded ({ptsi} in the stream's time base, exact);
        # resampled: its place on the output rate's grid ({pts}, in 1/fps).
        options.update(stats_enc_pre=stats, stats_enc_pre_fmt="{ptsi} {tbi}" if spec.fps is None else "{pts} {tb}")
    out = stream.output("pipe:", **options).global_args("-nostdin", "-v", "error")
    return out.compile(cmd=ffmpeg_exe())


# FFmpeg processes of this Python process that may still run; killed at exit.
_LIVE: set[subprocess.Popen] = set()


def _spawn(cmd: list[str], **kwargs) -> subprocess.Popen:
    """Start FFmpeg with no stdin; on Linux it gets SIGKILL when the thread that started it dies."""
    preexec = functools.partial(_die_with_parent, os.getpid()) if _PRCTL is not None else None
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=preexec, **kwargs)  # noqa: PLW1509
    _LIVE.add(proc)
    return proc


def _run(cmd: list[str], path: str, *, timeout: float) -> subprocess.CompletedProcess:
    """Run FFmpeg to its end with text output, killing it after `timeout` seconds."""
    try:
        proc = _spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
    except OSError as exc:
        raise FFmpegError(path, f"cannot start FFmpeg ({exc})", cmd=cmd, transient=True) from exc
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException as exc:
        _kill(proc)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=KILL_WAIT_S)  # reap it and close the pipes
        if isinstance(exc, subprocess.TimeoutExpired):
            raise FFmpegError(path, f"FFmpeg gave no answer in {timeout:g} s (a stalled source?); it was stopped",
                              cmd=cmd, transient=True) from None
        raise
    finally:
        if proc.returncode is not None:
            _LIVE.discard(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.kill()


def _wait(proc: subprocess.Popen) -> int | None:
    """The exit code once FFmpeg has exited (killed when it has not after `KILL_WAIT_S`); None when
    even a kill does not end it (a process stuck in the kernel on a dead mount)."""
    try:
        return proc.wait(timeout=KILL_WAIT_S)
    except subprocess.TimeoutExpired:
        _kill(proc)
        try:
            return proc.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            return None
    finally:
        if proc.returncode is not None:
            _LIVE.discard(proc)


@atexit.register
def _kill_all() -> None:
    for proc in list(_LIVE):
        _kill(proc)


def _load_prctl():  # noqa: ANN202
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """Runs in the child between fork and exec: SIGKILL when the parent dies. The parent may have
    died before this call, and then no signal would come: exit at once."""
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)  # type: ignore[misc]
    if os.getppid() != parent:
        os._exit(1)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


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
    """An ffmpeg-python input for a video file (or a pipe) or for a frame folder (through FFmpeg's image2)."""
    if frame_files is None:
        if not Path(uri).exists() or Path(uri).is_dir():
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
