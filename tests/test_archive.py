"""Archive listing and dating, and per-video archive scoring: skip, re-score, failures, and a store of
its own that keeps no frames unless asked."""

import os
import re
import shutil
from dataclasses import replace
from datetime import date, datetime, timezone
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
from vad.storage import read_part, read_table, write_table
from vad.tasks.inference.routing import BatchBudget
from vad.tasks.inference.scoring import ScoreSettings
from vad.tasks.operations.archive import (
    date_in_path,
    failure_row,
    list_archive,
    local_copy,
    resolve_range,
    score_archive_video,
)
from vad.tasks.sources.datasets._base import video_id_for  # the archive's ids follow the datasets' rule

from vad.errors import FFmpegError, NotFoundError, ParameterError


@pytest.mark.parametrize("path, expected", [
    ("2026-11-20/cam1-0300.mp4", date(2026, 11, 20)),
    ("2026/11/20/0300.mp4", date(2026, 11, 20)),
    ("cam1_20261120T030000.mp4", date(2026, 11, 20)),
    ("2026_11_19/cam1-2026.11.20.mp4", date(2026, 11, 20)),  # the last date in the path wins
    ("cam1/1700000000.mp4", None),  # ten digits: no date inside a longer number
    ("2026-13-01/a.mp4", None),  # no month 13
    ("1890-01-01/a.mp4", None),
    ("clip.mp4", None),
])
def test_dates_in_paths(path, expected):
    assert date_in_path(path) == expected


def test_video_ids_are_store_safe_and_follow_the_path():
    assert video_id_for("2026-11-20/cam 1 (north).mp4") == "2026-11-20_cam-1-north"
    assert video_id_for("a/b/c.avi") == "a_b_c"
    assert video_id_for("_x.mp4") == "x"


def test_ranges_from_dates_or_a_lookback():
    assert resolve_range(date(2026, 1, 1), date(2026, 1, 31), None) == (date(2026, 1, 1), date(2026, 1, 31))
    assert resolve_range(None, None, 2, today=date(2026, 11, 24)) == (date(2026, 11, 22), date(2026, 11, 24))
    assert resolve_range(None, None, None) == (None, None)
    with pytest.raises(ParameterError, match="after"):
        resolve_range(date(2026, 2, 1), date(2026, 1, 1), None)
    with pytest.raises(ParameterError, match="not both"):
        resolve_range(date(2026, 2, 1), None, 3)


def _touch(path: Path, when: datetime) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * 10)
    os.utime(path, (when.timestamp(), when.timestamp()))
    return path


def test_listing_dates_videos_by_path_or_modification_time(tmp_path):
    jan5 = datetime(2026, 1, 5, 12, tzinfo=timezone.utc)
    _touch(tmp_path / "2026-01-02" / "a.mp4", jan5)  # dated by its path
    _touch(tmp_path / "loose" / "b.mkv", jan5)  # no date in the path: its mtime
    _touch(tmp_path / "2026-01-09" / "notes.txt", jan5)  # not a video
    _touch(tmp_path / ".trash" / "2026-01-03" / "c.mp4", jan5)  # hidden
    every = list_archive(str(tmp_path))
    assert [(v.video_id, v.date, v.date_from) for v in every] == [
        ("2026-01-02_a", date(2026, 1, 2), "path"), ("loose_b", date(2026, 1, 5), "mtime"),
    ]
    assert [v.video_id for v in list_archive(str(tmp_path), since=date(2026, 1, 3))] == ["loose_b"]
    assert [v.video_id for v in list_archive(str(tmp_path), until=date(2026, 1, 4))] == ["2026-01-02_a"]
    assert [v.video_id for v in list_archive(str(tmp_path), date_from="path")] == ["2026-01-02_a"]
    by_mtime = list_archive(str(tmp_path), date_from="mtime")
    assert {v.date for v in by_mtime} == {date(2026, 1, 5)}
    assert every[0].size == 10 and every[0].modified.startswith("2026-01-05T12:00:00")


def test_listing_refuses_a_missing_folder_and_resolves_clashing_ids(tmp_path):
    (tmp_path / "a file.mp4").touch()
    for missing in (tmp_path / "nope", tmp_path / "a file.mp4"):
        with pytest.raises(NotFoundError) as refused:
            list_archive(str(missing))
        # one sentence naming the folder once and the problem
        assert str(refused.value) == f"archive {missing} is not a folder (or does not exist)"
    when = datetime(2026, 1, 5, tzinfo=timezone.utc)
    _touch(tmp_path / "2026-01-02" / "a.mp4", when)
    _touch(tmp_path / "2026-01-02" / "a.avi", when)
    _touch(tmp_path / "2026-01-03" / "café 1.mp4", when)
    ids = {v.relative: v.video_id for v in list_archive(str(tmp_path))}
    # The first path keeps the id; the other gets a suffix from a hash of its path, whatever the range.
    assert ids["2026-01-02/a.avi"] == "2026-01-02_a" and re.fullmatch(r"2026-01-02_a-[0-9a-f]{6}", ids["2026-01-02/a.mp4"])
    assert ids["2026-01-03/café 1.mp4"] == "2026-01-03_cafe-1"
    assert [v.video_id for v in list_archive(str(tmp_path), since=date(2026, 1, 2), until=date(2026, 1, 2))] == sorted(
        [ids["2026-01-02/a.avi"], ids["2026-01-02/a.mp4"]])
    with pytest.raises(ParameterError, match="date_from"):
        list_archive(str(tmp_path), date_from="exif")  # type: ignore[arg-type]


def test_remote_archives_are_listed_and_copied_through_fsspec():
    fs = fsspec.filesystem("memory")
    fs.pipe("/cams/2026-03-04/x.mp4", b"video bytes")
    try:
        (video,) = list_archive("memory://cams")
        assert (video.video_id, video.date, video.uri) == ("2026-03-04_x", date(2026, 3, 4), "memory:///cams/2026-03-04/x.mp4")
        with local_copy(video) as path:
            assert Path(path).read_bytes() == b"video bytes"
        assert not Path(path).exists()  # the temporary copy is gone
    finally:
        fs.rm("/cams", recursive=True)


def _score(root, video, settings, **kw):
    return score_archive_video(root, "cam", "r", video, settings, key=settings.key(), params=settings.params(), **kw)


def test_a_video_is_scored_once_and_again_only_when_the_models_or_the_file_change(camera_workspace, tmp_path):
    root, archive, settings = camera_workspace
    root = shutil.copytree(root, tmp_path / "ws")
    video = list_archive(archive)[0]
    first = _score(str(root), video, settings)
    assert first.status == "scored" and first.frames == 40  # tiny videos: 40 frames, 4 clips of 16 every 8
    assert first.clips == 4 and first.escalated == 1  # a budget of 0.25 of 4 clips
    row = read_part(root, "videos", "cam", "r", video.video_id).iloc[0]
    assert (row["frames"], row["key"], row["source_size"]) == (40, settings.key(), video.size)
    assert _score(str(root), video, settings).status == "skipped"
    other = replace(settings, scoring=ScoreSettings(BatchBudget(0.5)))
    assert other.key() != settings.key()
    again = _score(str(root), video, other)
    assert again.status == "scored" and again.escalated == 2
    assert _score(str(root), video, other, rescore=True).status == "scored"
    moved = replace(video, modified="2030-01-01T00:00:00+00:00")  # the file was replaced
    assert _score(str(root), moved, other).status == "scored"
    clips = read_table(root, "clips", dataset="cam", run_id="r")
    assert len(clips) == 4 and clips.escalated.sum() == 2  # replaced each time, never appended


def test_a_failed_rescore_keeps_the_earlier_rows(camera_workspace, tmp_path):
    root, archive, settings = camera_workspace
    root = str(shutil.copytree(root, tmp_path / "ws"))
    video = list_archive(archive)[0]
    _score(root, video, settings)
    before = read_table(root, "clips", dataset="cam", run_id="r")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    bad = replace(video, uri=str(broken), size=11)
    with pytest.raises(FFmpegError, match="broken.mp4"):
        _score(root, bad, settings)
    pd.testing.assert_frame_equal(read_table(root, "clips", dataset="cam", run_id="r"), before)
    write_table(root, "failures", "cam", "r", failure_row(bad, FFmpegError(str(broken), "corrupt")), part=video.video_id)
    failures = read_table(root, "failures", dataset="cam")
    assert failures.video.tolist() == [video.video_id] and "corrupt" in failures.message[0]


def test_archive_scoring_never_touches_the_dataset_store_and_keeps_no_frames(camera_workspace, tmp_path):
    from vad.storage import ClipStore
    from vad.tasks.operations.archive import archive_store_url
    from vad.tasks.workspace import store_url

    root, archive, settings = camera_workspace
    root = str(shutil.copytree(root, tmp_path / "ws"))
    video = list_archive(archive)[0]
    # the camera's benchmark store holds a training video whose id is the archive video's
    bench = ClipStore.create(store_url(root, "cam"), dataset="cam")
    w = bench.begin_video(video.video_id, height=32, width=32, channels=1, chunk_frames=16,
                          attrs={"split": "train", "source_hash": "training-footage"})
    w.append(np.full((20, 32, 32, 1), 9, np.uint8), np.zeros(20, bool))
    w.finish(np.zeros(20, np.int8), {})
    assert _score(root, video, settings).status == "scored"
    kept = ClipStore.open(store_url(root, "cam"))
    assert kept.video_ids() == [video.video_id]  # nothing added to the benchmark store, nothing replaced
    assert kept.video(video.video_id).attrs["source_hash"] == "training-footage" and kept.video(video.video_id).n_frames == 20
    work = ClipStore.open(archive_store_url(root, "cam", "r"))
    assert work.video_ids(include_incomplete=True) == []  # its frames went once its rows were written
    assert read_part(root, "videos", "cam", "r", video.video_id).iloc[0]["frames"] == 40


def test_keep_frames_keeps_them_in_the_archive_runs_own_store(camera_workspace, tmp_path):
    from vad.storage import ClipStore
    from vad.tasks.operations.archive import archive_store_url

    root, archive, settings = camera_workspace
    root = str(shutil.copytree(root, tmp_path / "ws"))
    video = list_archive(archive)[0]
    assert _score(root, video, settings, keep_frames=True).status == "scored"
    assert archive_store_url(root, "cam", "r") == f"{root}/archive/cam/r/work.zarr"
    stored = ClipStore.open(archive_store_url(root, "cam", "r")).video(video.video_id)
    assert stored.n_frames == 40 and stored.attrs["source_uri"] == video.uri
    assert not (Path(root) / "stores").exists()  # no benchmark store was made either


def test_a_backfill_pass_without_prefect_plans_holds_the_run_and_records_it(camera_workspace, tmp_path):
    """The backfill flow's steps are plain functions: plan, hold the run, record it (no video scored here)."""
    from vad.storage import read_manifest, run_dir, write_manifest
    from vad.tasks.operations.archive import BackfillSettings, archive_run, archive_store_url, finish_backfill, plan_backfill

    root, archive, _ = camera_workspace
    root = str(shutil.copytree(root, tmp_path / "ws"))
    plan = plan_backfill(archive, "cam", root=root, run_id="r", since=date(2026, 11, 21),
                         settings=BackfillSettings(batch_size=1))
    assert [[v.relative for v in b] for b in plan.batches] == [["2026-11-21/cam-1.mp4"], ["2026-11-22/cam-2.mp4"]]
    write_manifest(root, "cam", "r", {"run": "r", "last": {"scored": 9}})  # an earlier pass
    lock = run_dir(root, "runs", "cam", "r") / "run.lock"
    with archive_run(plan) as store:
        assert store == archive_store_url(root, "cam", "r") and Path(store).is_dir() and lock.exists()
        assert not (lock.parent / "run.json").exists()  # a pass in progress is never read as complete
        summary = finish_backfill(plan, store, [], {"2026-11-21_cam-1": "broken"})
    assert summary.any_failed and not lock.exists() and not Path(store).exists()  # no frames kept: no store left
    assert read_manifest(root, "cam", "r")["last"] | {"seconds": 0, "finished_at": ""} == {
        "videos": 2, "scored": 0, "skipped": 0, "failed": {"2026-11-21_cam-1": "broken"}, "seconds": 0, "finished_at": ""}
