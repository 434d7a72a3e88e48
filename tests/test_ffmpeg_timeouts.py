"""FFmpeg never hangs a run (issue 17, item 6): a source that never ends is given up on, the process
is killed, and the error names the file and is worth a retry."""

import os
import subprocess
import sys
import textwrap
import time

import pytest
from vad.tasks.sources import ffmpeg_io
from vad.tasks.sources.ffmpeg_io import DecodeSpec, ffmpeg_exe, probe, read_frames

from vad.errors import FFmpegError


@pytest.fixture
def fifo(tmp_path):
    """A named pipe nobody writes: FFmpeg blocks opening it, as on a stalled mount."""
    path = tmp_path / "stalled.mp4"
    os.mkfifo(path)
    return path


def _live_ffmpeg() -> list[str]:
    """Pids of FFmpeg processes that are children of this one."""
    out = subprocess.run(["ps", "-o", "pid=,comm=", "--ppid", str(os.getpid())], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if "ffmpeg" in line]


def test_probe_of_a_source_that_never_answers_times_out(fifo):
    t0 = time.monotonic()
    with pytest.raises(FFmpegError) as err:
        probe(fifo, timeout=1.0)
    assert time.monotonic() - t0 < 10
    assert str(fifo) in str(err.value) and "1 s" in str(err.value) and err.value.transient
    assert not _live_ffmpeg()


def test_decoding_a_stalled_source_stops_after_the_inactivity_timeout(fifo):
    t0 = time.monotonic()
    with pytest.raises(FFmpegError) as err:
        for _ in read_frames(str(fifo), DecodeSpec(64, 64, 1), batch_frames=4, stall_timeout=1.0):
            pass
    assert time.monotonic() - t0 < 10
    assert str(fifo) in str(err.value) and "no frame" in str(err.value) and err.value.transient
    assert not _live_ffmpeg()


def test_a_source_that_trickles_runs_out_of_its_time_budget(tmp_path):
    """Bytes that keep coming but too slowly: the total limit, not the inactivity one, stops it."""
    path = tmp_path / "slow.y4m"
    os.mkfifo(path)
    writer = subprocess.Popen(  # a Y4M header, then a 64x64 gray frame every 0.3 s, for ever
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            with open({str(path)!r}, "wb", buffering=0) as fh:
                fh.write(b"YUV4MPEG2 W64 H64 F25:1 Ip A1:1 Cmono\\n")
                while True:
                    fh.write(b"FRAME\\n" + bytes(64 * 64))
                    time.sleep(0.3)
        """)],
    )
    try:
        t0 = time.monotonic()
        with pytest.raises(FFmpegError) as err:
            for _ in read_frames(str(path), DecodeSpec(64, 64, 1), batch_frames=1, stall_timeout=1.0, time_limit=2.0):
                pass
        assert 1.5 < time.monotonic() - t0 < 10
        assert "2 s" in str(err.value) and err.value.transient
    finally:
        writer.kill()
        writer.wait()
    assert not _live_ffmpeg()


def test_ffmpeg_is_killed_when_the_consumer_stops_early(tmp_path):
    from conftest import ramp_frames, write_video

    path = write_video(tmp_path / "v.mp4", ramp_frames(64, 64, 64))
    frames = read_frames(str(path), DecodeSpec(64, 64, 1), batch_frames=2)
    first = next(iter(frames))
    assert first.shape == (2, 64, 64, 1)
    assert _live_ffmpeg()
    del first
    frames.close()
    assert not _live_ffmpeg()


def test_ffmpeg_dies_with_the_python_process_that_started_it(fifo, tmp_path):
    """SIGKILL leaves no finally block or atexit hook to run: the parent-death signal does it."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux's")
    pid_file = tmp_path / "ffmpeg.pid"
    code = textwrap.dedent(f"""
        import subprocess, sys
        sys.path.insert(0, {os.getcwd()!r})
        from vad.tasks.sources import ffmpeg_io
        real = ffmpeg_io._spawn
        def spawn(cmd, **kw):
            proc = real(cmd, **kw)
            open({str(pid_file)!r}, "w").write(str(proc.pid))
            return proc
        ffmpeg_io._spawn = spawn
        for _ in ffmpeg_io.read_frames({str(fifo)!r}, ffmpeg_io.DecodeSpec(64, 64, 1), batch_frames=1):
            pass
    """)
    parent = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.05)
    ffmpeg_pid = int(pid_file.read_text())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    try:
        while _alive(ffmpeg_pid):
            assert time.monotonic() < deadline, "FFmpeg outlived the process that started it"
            time.sleep(0.05)
    finally:
        if _alive(ffmpeg_pid):
            os.kill(ffmpeg_pid, 9)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_time_limit_grows_with_the_input():
    assert ffmpeg_io.decode_time_limit(duration=None, size=0) == ffmpeg_io.TIME_LIMIT_FLOOR_S
    assert ffmpeg_io.decode_time_limit(duration=3600.0, size=0) == ffmpeg_io.TIME_LIMIT_FLOOR_S + 3600 * ffmpeg_io.TIME_LIMIT_FACTOR
    # No duration known: estimated from the size at a bitrate lower than any camera's.
    assert ffmpeg_io.decode_time_limit(duration=None, size=10**9) > ffmpeg_io.decode_time_limit(duration=None, size=10**6)
    assert ffmpeg_exe()
