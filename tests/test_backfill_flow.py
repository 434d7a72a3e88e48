"""The backfill flow: idempotent re-runs, failures reported and recorded, Dask equals threads,
a run killed midway that finishes on the next run with the tables of an uninterrupted one, two runs
of one archive at once that lose nothing, and a run held by another process waited for or named."""

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect.exceptions import ParameterTypeError
from vad.flows.backfill import backfill_flow
from vad.storage import (
    ClipStore,
    LockHeldError,
    read_manifest,
    read_table,
    run_lock,
    write_manifest,
)
from vad.tasks.runtime.compute import Compute
from vad.tasks.inference.scoring import ScoreSettings
from vad.tasks.operations.archive import BackfillSettings, archive_store_url
from vad.tasks.operations.runners import RunnerSpec, current_api_url

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


def _tables(root) -> dict[str, pd.DataFrame]:
    """The run's clip and frame rows in a fixed order, and the videos it holds."""
    out = {}
    for table, order in (("clips", ["video", "clip"]), ("frames", ["video", "frame"])):
        out[table] = read_table(root, table, dataset="cam").sort_values(order).reset_index(drop=True)
    out["videos"] = read_table(root, "videos", dataset="cam")[["video", "frames", "clips", "escalated", "key"]].sort_values("video").reset_index(drop=True)
    return out


def _assert_same(a: dict, b: dict) -> None:
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True, check_categorical=False)


def _workspace(camera_workspace, tmp_path, name="ws"):
    root, archive, _ = camera_workspace
    ws = shutil.copytree(root, tmp_path / name)
    return str(ws), archive


def test_backfill_scores_a_range_once_and_records_the_bad_video(camera_workspace, tmp_path, prefect_server):
    root, archive = _workspace(camera_workspace, tmp_path)
    bad = Path(archive).parent / "with-bad"
    shutil.copytree(archive, bad)
    (bad / "2026-11-21" / "broken.mp4").write_bytes(b"not a video")
    state = backfill_flow(archive=str(bad), dataset="cam", root=root, since=date(2026, 11, 21), until=date(2026, 11, 22),
                          return_state=True)
    assert state.is_failed() and state.message == "1 of 3 videos failed"  # one rule with ingest: a failed video fails the run
    first = state.result(raise_on_failure=False)
    assert (first.scored, first.skipped, list(first.failures)) == (2, 0, ["2026-11-21_broken"])
    assert "broken.mp4" in first.failures["2026-11-21_broken"]
    videos = read_table(root, "videos", dataset="cam")
    assert sorted(videos.video) == ["2026-11-21_cam-1", "2026-11-22_cam-2"]
    assert read_table(root, "failures", dataset="cam").video.tolist() == ["2026-11-21_broken"]
    parts = {p: p.stat().st_mtime_ns for t in ("clips", "frames", "videos") for p in (Path(root) / "scores" / t).rglob("*.parquet")}
    # a pass with other compute settings does no model work either (they are not part of the key);
    # run.json says what its latest pass computed with
    cpu = BackfillSettings(scoring=ScoreSettings(compute=Compute(device="cpu", batch=4, precision="float32")))
    second = backfill_flow(archive=str(bad), dataset="cam", root=root, since=date(2026, 11, 21), until=date(2026, 11, 22),
                           settings=cpu, return_state=True).result(raise_on_failure=False)
    assert (second.scored, second.skipped) == (0, 2)  # no model work
    assert read_manifest(root, "cam", "archive")["compute"] == {"device": "cpu", "batch": 4, "precision": "float32",
                                                                 "compile": False}
    assert {p: p.stat().st_mtime_ns for p in parts} == parts  # no score rewritten (the bad video is tried again)
    shutil.copy(bad / "2026-11-21" / "cam-1.mp4", bad / "2026-11-21" / "broken.mp4")  # the file is replaced by a good one
    third = backfill_flow(archive=str(bad), dataset="cam", root=root, since=date(2026, 11, 21), until=date(2026, 11, 22))
    assert (third.scored, third.skipped, third.failures) == (1, 2, {})
    assert not list((Path(root) / "scores" / "failures").rglob("*.parquet"))  # its failure row went with it


def test_a_backfill_where_every_video_failed_ends_failed_and_the_cli_still_prints_it(camera_workspace, tmp_path, prefect_server):
    root, _ = _workspace(camera_workspace, tmp_path)
    bad = tmp_path / "all-bad"
    (bad / "2026-11-21").mkdir(parents=True)
    (bad / "2026-11-21" / "broken.mp4").write_bytes(b"not a video")
    state = backfill_flow(archive=str(bad), dataset="cam", root=root, return_state=True)
    assert state.is_failed() and state.message == "1 of 1 videos failed"  # as `ingest` ends when a video failed
    summary = state.result(raise_on_failure=False)
    assert (summary.scored, summary.skipped, list(summary.failures)) == (0, 0, ["2026-11-21_broken"])
    assert read_manifest(root, "cam", "archive")["last"]["failed"] == summary.failures  # the run is still recorded
    assert read_table(root, "failures", dataset="cam").video.tolist() == ["2026-11-21_broken"]
    cmd, env = _cli(root, str(bad), current_api_url())
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "scored 0, skipped 0 (already scored with these models), failed 1" in result.stdout
    assert "FAILED 2026-11-21_broken:" in result.stdout and "broken.mp4" in result.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    assert backfill_flow(archive=str(empty), dataset="cam", root=root, return_state=True).is_completed()  # nothing tried


def test_flow_parameters_are_validated_before_any_work():
    for bad in ({"settings": {"scoring": {"budget": {"fraction": 1.5}}}}, {"settings": {"batch_size": 0}},
                {"settings": {"date_from": "ctime"}}, {"since": "yesterday"}, {"runner": {"kind": "ray"}},
                {"runner": {"workers": 0}}, {"lookback_days": -1}, {"settings": {"scoring": {"compute": {"device": "tpu"}}}}):
        with pytest.raises(ParameterTypeError):
            backfill_flow.validate_parameters({"archive": "/a", "dataset": "cam", **bad})


def test_a_local_dask_cluster_gives_the_tables_of_the_default_runner(camera_workspace, tmp_path, prefect_server):
    threads_root, archive = _workspace(camera_workspace, tmp_path, "threads")
    dask_root, _ = _workspace(camera_workspace, tmp_path, "dask")
    a = backfill_flow(archive=archive, dataset="cam", root=threads_root)
    b = backfill_flow(archive=archive, dataset="cam", root=dask_root, runner=RunnerSpec("dask", workers=2))
    assert a.scored == b.scored == 3 and not a.failures and not b.failures
    _assert_same(_tables(threads_root), _tables(dask_root))


def _cli(root: str, archive: str, api: str, *extra: str) -> tuple[list[str], dict[str, str]]:
    return [sys.executable, "-m", "vad.flows.cli", "backfill", archive, "--dataset", "cam", "--root", root,
            "--batch-size", "1", "--workers", "1", *extra], {**os.environ, "PREFECT_API_URL": api}


def _six_video_archive(synthetic_store, tmp_path) -> Path:
    """The six 150-frame synthetic test videos (stored at 32x32 gray) over three days."""
    archive = tmp_path / "archive"
    for i, src in enumerate(sorted((Path(synthetic_store).parent / "data").rglob("test/*.mp4"))):
        (archive / f"2026-11-2{i % 3}").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, archive / f"2026-11-2{i % 3}" / src.name)
    return archive


def test_a_backfill_killed_midway_finishes_with_the_tables_of_an_uninterrupted_run(camera_workspace, synthetic_store, tmp_path, prefect_server):
    api = current_api_url()
    archive = _six_video_archive(synthetic_store, tmp_path)  # one at a time, so the kill lands with work left to do
    whole, _ = _workspace(camera_workspace, tmp_path, "whole")
    killed, _ = _workspace(camera_workspace, tmp_path, "killed")

    # the uninterrupted run in this process (the CLI's settings: one video a batch, one thread): a
    # `vad` process of its own would only add its start-up
    backfill_flow(archive=str(archive), dataset="cam", root=whole, settings=BackfillSettings(batch_size=1, keep_frames=True),
                  runner=RunnerSpec("threads", workers=1))

    write_manifest(killed, "cam", "archive", {"run": "archive", "last": {"scored": 6}})  # an earlier, complete run
    cmd, env = _cli(killed, str(archive), api, "--keep-frames")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    done_dir = Path(killed) / "scores" / "videos"
    deadline = time.monotonic() + 240
    while not list(done_dir.rglob("part-*.parquet")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and whatever it started
    proc.wait(timeout=30)
    done_at_kill = len(list(done_dir.rglob("part-*.parquet")))
    assert 1 <= done_at_kill < 6, done_at_kill
    assert not (Path(killed) / "scores" / "runs" / "dataset=cam" / "run=archive" / "run.json").exists()  # never read as complete
    assert (Path(killed) / "scores" / "runs" / "dataset=cam" / "run=archive" / "run.lock").exists()  # the dead run's lock

    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr  # the lock of the killed run was taken over
    assert f"skipped {done_at_kill}" in result.stdout
    assert read_manifest(killed, "cam", "archive")["last"]["skipped"] == done_at_kill
    _assert_same(_tables(whole), _tables(killed))
    a, b = ClipStore.open(archive_store_url(whole, "cam", "archive")), ClipStore.open(archive_store_url(killed, "cam", "archive"))
    assert a.video_ids() == b.video_ids() and len(a.video_ids()) == 6
    for vid in a.video_ids():
        assert np.array_equal(a.video(vid).read(0, a.video(vid).n_frames), b.video(vid).read(0, b.video(vid).n_frames))
    assert not [p for p in Path(killed, "scores").rglob("*") if p.name.startswith(".")]  # no temporary file left
    assert not list(Path(killed).rglob("*.lock")) and not (Path(killed) / "stores").exists()


def test_two_backfills_of_one_archive_at_once_score_every_video_once(camera_workspace, synthetic_store, tmp_path, prefect_server):
    root, _ = _workspace(camera_workspace, tmp_path)
    archive = _six_video_archive(synthetic_store, tmp_path)
    cmd, env = _cli(root, str(archive), current_api_url())
    cmd[cmd.index("--workers") + 1] = "2"
    runs = [subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [(p.wait(timeout=600), *p.communicate()) for p in runs]
    assert [code for code, *_ in outs] == [0, 0], [err[-3000:] for *_, err in outs]
    counts = sorted((int(out.split("scored ")[1].split(",")[0]), int(out.split("skipped ")[1].split(" ")[0])) for _, out, _ in outs)
    assert counts == [(0, 6), (6, 0)]  # the second waited for the first, then found every video scored
    assert any("waiting up to" in err and "run.lock" in err for *_, err in outs)
    videos = read_table(root, "videos", dataset="cam")
    assert len(videos) == 6 and videos.video.is_unique
    clips = read_table(root, "clips", dataset="cam")
    assert len(clips) == 6 * 17 and not clips.duplicated(["video", "clip"]).any()  # 150 frames: 17 clips of 16 every 8
    assert not (Path(root) / "scores" / "failures").exists()
    assert not (Path(root) / "stores").exists() and not (Path(root) / "archive").exists()  # no frames left anywhere
    assert not [p for p in Path(root).rglob("*") if p.suffix in (".lock", ".tmp", ".break")]


def test_a_run_held_by_another_process_is_named_in_one_line(camera_workspace, tmp_path, prefect_server):
    root, archive = _workspace(camera_workspace, tmp_path)
    with run_lock(root, "cam", "archive", purpose="the nightly run"), pytest.raises(LockHeldError) as err:
        backfill_flow(archive=archive, dataset="cam", root=root, settings=BackfillSettings(lock_timeout_s=0))
    message = str(err.value)
    assert "run=archive/run.lock" in message and f"pid {os.getpid()}" in message and "the nightly run" in message
    assert "\n" not in message
    assert not list((Path(root) / "scores").rglob("*.parquet"))  # nothing written
