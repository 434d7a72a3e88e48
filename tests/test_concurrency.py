"""Two processes at once lose nothing: table writes that never delete each other's temporary files,
and lock files (one per run, one per video group) that exclude a second writer, wait for it or
name it, and are taken over when their holder died. Every test uses real processes, not threads."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from vad.storage import ClipStore, LockHeldError, acquire_lock, read_part, run_lock
from vad.storage._locks import is_stale
from vad.storage._files import STALE_TMP_S
from vad.storage._tables import part_path, write_table

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, *args: str) -> subprocess.Popen:
    """A separate Python process running `code` (with sys.argv[1:] = args), from the repository."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"helper exited {proc.returncode}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear")
        time.sleep(0.05)


WRITER = """
    import sys, time
    from pathlib import Path
    import numpy as np, pandas as pd
    from vad.storage import write_table
    root, go, tag = sys.argv[1:]
    while not Path(go).exists():
        time.sleep(0.01)
    frame = pd.DataFrame({"writer": [tag] * 200_000, "x": np.arange(200_000)})
    for _ in range(25):
        write_table(root, "clips", "d", "r", frame, part="same")
    print("done")
"""


def test_two_processes_writing_one_table_file_both_finish_and_the_file_is_whole(tmp_path):
    go = tmp_path / "go"
    writers = [_python(WRITER, str(tmp_path), str(go), tag) for tag in ("a", "b")]
    time.sleep(3)  # both imported and waiting
    go.touch()
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in writers]
    assert [(code, out.strip()) for code, out, _ in results] == [(0, "done"), (0, "done")], [err[-2000:] for *_, err in results]
    table = read_part(tmp_path, "clips", "d", "r", "same")
    assert len(table) == 200_000 and table.writer.nunique() == 1  # one writer's file, whole
    assert not [p.name for p in part_path(tmp_path, "clips", "d", "r", "same").parent.iterdir() if p.name.startswith(".")]


def test_a_write_clears_only_stale_temporary_files_of_its_target(tmp_path, monkeypatch):
    target = part_path(tmp_path, "clips", "d", "r", "0")
    target.parent.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    try:
        live = target.with_name(f".{target.name}.{sleeper.pid}@{host}.abc123.tmp")  # another process is writing it
        crashed = target.with_name(f".{target.name}.{dead.pid}@{host}.def456.tmp")  # its writer is gone
        remote = target.with_name(f".{target.name}.4242@other-host.ghi789.tmp")  # another machine, recent
        old = target.with_name(f".{target.name}.4343@other-host.jkl012.tmp")  # another machine, long ago
        for p in (live, crashed, remote, old):
            p.write_bytes(b"partial")
        past = time.time() - STALE_TMP_S - 60
        os.utime(old, (past, past))
        write_table(tmp_path, "clips", "d", "r", pd.DataFrame({"x": [1]}))
        assert live.exists() and remote.exists()
        assert not crashed.exists() and not old.exists()
        monkeypatch.setattr("vad.storage._files.STALE_TMP_S", 0.0)  # every file "old": a live writer's still stays
        write_table(tmp_path, "clips", "d", "r", pd.DataFrame({"x": [2]}))
        assert live.exists() and not remote.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


HOLDER = """
    import sys, time
    from pathlib import Path
    from vad.storage import acquire_lock
    path, ready, hold = sys.argv[1:]
    with acquire_lock(path, purpose="test the lock"):
        Path(ready).touch()
        time.sleep(float(hold))
    print("released")
"""


def test_a_held_lock_names_its_holder_and_a_waiter_gets_it_when_released(tmp_path):
    lock = tmp_path / "locks" / "x.lock"
    ready = tmp_path / "ready"
    holder = _python(HOLDER, str(lock), str(ready), "4")
    _wait_for(ready, holder)
    with pytest.raises(LockHeldError) as err:
        acquire_lock(lock, purpose="write x", timeout=0)
    message = str(err.value)
    assert str(lock) in message and f"pid {holder.pid}" in message and socket.gethostname() in message
    assert "test the lock" in message and "\n" not in message
    said = []
    t0 = time.monotonic()
    with acquire_lock(lock, purpose="write x", timeout=60, on_wait=said.append) as mine:
        assert time.monotonic() - t0 > 1  # it waited for the holder
        assert holder.wait(timeout=30) == 0 and holder.stdout.read().strip() == "released"
        assert mine.info["pid"] == os.getpid() and lock.exists()
    assert len(said) == 1 and f"pid {holder.pid}" in said[0]
    assert not lock.exists()  # released on exit


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    lock = tmp_path / "x.lock"
    ready = tmp_path / "ready"
    holder = _python(HOLDER, str(lock), str(ready), "600")
    _wait_for(ready, holder)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    assert lock.exists()  # left behind
    with acquire_lock(lock, purpose="after the crash", timeout=0) as mine:
        assert mine.info["purpose"] == "after the crash"


def test_locks_of_other_hosts_are_stale_only_when_no_longer_refreshed(tmp_path):
    lock = tmp_path / "x.lock"
    lock.write_text('{"pid": 1, "host": "other-host", "started_at": "2026-01-01T00:00:00+00:00", "started": 0, '
                    '"purpose": "a run elsewhere", "token": "t"}')
    with pytest.raises(LockHeldError, match="other-host"):
        acquire_lock(lock, purpose="x", timeout=0)  # pid 1 lives here, but that says nothing about the other host
    past = time.time() - 3600
    os.utime(lock, (past, past))
    assert is_stale(lock, {"host": "other-host", "pid": 1})
    with acquire_lock(lock, purpose="x", timeout=0):
        pass


def test_a_lock_of_a_live_local_holder_is_never_stale_however_old(tmp_path):
    lock = tmp_path / "x.lock"  # held by this process, not refreshed for an hour (a suspended machine, a stalled disk)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": "2026-01-01T00:00:00+00:00",
            "started": time.time(), "purpose": "a long stall", "token": "t"}
    lock.write_text(json.dumps(info))
    past = time.time() - 3600
    os.utime(lock, (past, past))
    assert not is_stale(lock, info)
    with pytest.raises(LockHeldError, match="a long stall"):
        acquire_lock(lock, purpose="x", timeout=0)
    assert json.loads(lock.read_text())["token"] == "t"  # not taken over


def test_a_lock_whose_pid_was_reused_by_a_newer_process_is_stale(tmp_path):
    lock = tmp_path / "x.lock"
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time() - 10 * 365 * 86400, "token": "t"}
    assert not is_stale(lock, info)  # no file: nothing to take over
    lock.write_text("{}")
    assert is_stale(lock, info)  # this process started after that lock was taken: not its holder
    assert not is_stale(lock, {**info, "started": time.time()})


def test_a_run_lock_excludes_a_second_process(tmp_path):
    with run_lock(tmp_path, "cam", "archive", purpose="backfill cam (run archive)"):
        other = _python("""
            import sys
            from vad.storage import LockHeldError, run_lock
            try:
                run_lock(sys.argv[1], "cam", "archive", purpose="nightly cam (run archive)", timeout=0)
            except LockHeldError as exc:
                print(exc)
        """, str(tmp_path))
        out, err = other.communicate(timeout=120)
        assert "backfill cam (run archive)" in out and f"pid {os.getpid()}" in out, err
        assert "cannot nightly cam (run archive)" in out


GROUP_WRITER = """
    import sys, time
    from pathlib import Path
    import numpy as np
    from vad.storage import ClipStore
    url, ready, hold = sys.argv[1:]
    store = ClipStore.open_or_create(url, dataset="d")
    w = store.begin_video("v", height=2, width=3, channels=1, chunk_frames=2, attrs={"split": "test", "by": "helper"})
    Path(ready).touch()
    w.append(np.full((4, 2, 3, 1), 1, np.uint8), np.zeros(4, bool))
    time.sleep(float(hold))
    w.finish(np.zeros(4, np.int8), {})
    print("finished")
"""


def test_a_video_group_being_written_by_another_process_is_not_touched(tmp_path):
    url = str(tmp_path / "s.zarr")
    ClipStore.create(url, dataset="d")
    ready = tmp_path / "ready"
    writer = _python(GROUP_WRITER, url, str(ready), "3")
    _wait_for(ready, writer)
    store = ClipStore.open(url, writable=True)
    with pytest.raises(LockHeldError, match=f"pid {writer.pid}"):
        store.begin_video("v", height=2, width=3, channels=1, chunk_frames=2, attrs={"split": "test"}, lock_timeout=0)
    with pytest.raises(LockHeldError):
        store.delete_video("v", lock_timeout=0)
    w = store.begin_video("v", height=2, width=3, channels=1, chunk_frames=2, attrs={"split": "test", "by": "test"},
                          lock_timeout=60)  # waits for the helper's finish, then rewrites the group
    assert writer.wait(timeout=30) == 0 and writer.stdout.read().strip() == "finished"
    w.append(np.full((5, 2, 3, 1), 2, np.uint8), np.zeros(5, bool))
    w.finish(np.zeros(5, np.int8), {})
    video = ClipStore.open(url).video("v")
    assert video.attrs["by"] == "test" and video.n_frames == 5 and np.all(video.read(0, 5) == 2)
    assert not list(Path(tmp_path).rglob("*.lock"))  # every group lock released
