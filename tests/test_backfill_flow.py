"""The backfill flow: idempotent re-runs, failures reported and recorded, Dask equals threads,
and a run killed midway that finishes on the next run with the tables of an uninterrupted one."""

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

from flows.backfill import backfill_flow
from storage import ClipStore, read_table
from tasks.runners import current_api_url

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
    first = backfill_flow(archive=str(bad), dataset="cam", root=root, since=date(2026, 11, 21), until=date(2026, 11, 22))
    assert (first.scored, first.skipped, list(first.failures)) == (2, 0, ["2026-11-21_broken"])
    assert "broken.mp4" in first.failures["2026-11-21_broken"]
    videos = read_table(root, "videos", dataset="cam")
    assert sorted(videos.video) == ["2026-11-21_cam-1", "2026-11-22_cam-2"]
    assert read_table(root, "failures", dataset="cam").video.tolist() == ["2026-11-21_broken"]
    parts = {p: p.stat().st_mtime_ns for t in ("clips", "frames", "videos") for p in (Path(root) / "scores" / t).rglob("*.parquet")}
    second = backfill_flow(archive=str(bad), dataset="cam", root=root, since=date(2026, 11, 21), until=date(2026, 11, 22))
    assert (second.scored, second.skipped) == (0, 2)  # no model work
    assert {p: p.stat().st_mtime_ns for p in parts} == parts  # no score rewritten (the bad video is tried again)
    shutil.copy(bad / "2026-11-21" / "cam-1.mp4", bad / "2026-11-21" / "broken.mp4")  # the file is replaced by a good one
    third = backfill_flow(archive=str(bad), dataset="cam", root=root, since=date(2026, 11, 21), until=date(2026, 11, 22))
    assert (third.scored, third.skipped, third.failures) == (1, 2, {})
    assert not list((Path(root) / "scores" / "failures").rglob("*.parquet"))  # its failure row went with it


def test_flow_parameters_are_validated_before_any_work():
    for bad in ({"budget": 1.5}, {"batch_size": 0}, {"since": "yesterday"}, {"runner": "ray"}, {"lookback_days": -1}):
        with pytest.raises(ParameterTypeError):
            backfill_flow.validate_parameters({"archive": "/a", "dataset": "cam", **bad})


def test_a_local_dask_cluster_gives_the_tables_of_the_default_runner(camera_workspace, tmp_path, prefect_server):
    threads_root, archive = _workspace(camera_workspace, tmp_path, "threads")
    dask_root, _ = _workspace(camera_workspace, tmp_path, "dask")
    a = backfill_flow(archive=archive, dataset="cam", root=threads_root)
    b = backfill_flow(archive=archive, dataset="cam", root=dask_root, runner="dask", workers=2)
    assert a.scored == b.scored == 3 and not a.failures and not b.failures
    _assert_same(_tables(threads_root), _tables(dask_root))


def _cli(root: str, archive: str, api: str) -> tuple[list[str], dict[str, str]]:
    return [sys.executable, "-m", "flows.cli", "backfill", archive, "--dataset", "cam", "--root", root,
            "--batch-size", "1", "--workers", "1"], {**os.environ, "PREFECT_API_URL": api}


def test_a_backfill_killed_midway_finishes_with_the_tables_of_an_uninterrupted_run(camera_workspace, synthetic_store, tmp_path, prefect_server):
    api = current_api_url()
    # six 150-frame videos, one at a time, so the kill lands with work left to do
    archive = tmp_path / "archive"
    for i, src in enumerate(sorted((Path(synthetic_store).parent / "data").rglob("test/*.mp4"))):
        (archive / "2026-11-2{}".format(i % 3)).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, archive / f"2026-11-2{i % 3}" / src.name)
    whole, _ = _workspace(camera_workspace, tmp_path, "whole")
    killed, _ = _workspace(camera_workspace, tmp_path, "killed")

    cmd, env = _cli(whole, str(archive), api)
    subprocess.run(cmd, env=env, cwd=REPO, check=True, capture_output=True, timeout=300)

    cmd, env = _cli(killed, str(archive), api)
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    done_dir = Path(killed) / "scores" / "videos"
    deadline = time.monotonic() + 240
    while not list(done_dir.rglob("part-*.parquet")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and whatever it started
    proc.wait(timeout=30)
    done_at_kill = len(list(done_dir.rglob("part-*.parquet")))
    assert 1 <= done_at_kill < 6, done_at_kill

    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"skipped {done_at_kill}" in result.stdout
    _assert_same(_tables(whole), _tables(killed))
    a, b = ClipStore.open(f"{whole}/stores/cam.zarr"), ClipStore.open(f"{killed}/stores/cam.zarr")
    assert a.video_ids() == b.video_ids() and len(a.video_ids()) == 6
    for vid in a.video_ids():
        assert np.array_equal(a.video(vid).read(0, a.video(vid).n_frames), b.video(vid).read(0, b.video(vid).n_frames))
    assert not [p for p in Path(killed, "scores").rglob("*") if p.name.startswith(".")]  # no temporary file left
