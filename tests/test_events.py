"""Events from frame scores, on scores small enough to check by hand."""

import numpy as np
import pandas as pd
import pytest
from vad.tasks.inference.events import EventSettings, duration_s, find_events

from vad.errors import ParameterError


def _frames(scores, video="v"):
    return pd.DataFrame({"video": video, "frame": np.arange(len(scores)), "score": np.asarray(scores, float)})


def test_a_run_above_the_threshold_is_one_event_with_its_peak_and_times():
    # 10 fps: frames 2-5 above 0.9 (0.4 s), peak at frame 4
    f = _frames([0.1, 0.5, 0.95, 0.97, 0.99, 0.92, 0.2, 0.1, 0.1, 0.1])
    ev = find_events(f, 0.9, 10.0, min_event_s=0.3, merge_gap_s=0.0)
    assert len(ev) == 1
    row = ev.iloc[0]
    assert (row.event, row.start_frame, row.end_frame, row.peak_frame) == (0, 2, 5, 4)
    assert row.start_s == pytest.approx(0.2) and row.end_s == pytest.approx(0.6)  # to the end of frame 5
    assert row.peak_score == pytest.approx(0.99) and row.mean_score == pytest.approx((0.95 + 0.97 + 0.99 + 0.92) / 4)
    assert row[["x0", "y0", "x1", "y1"]].isna().all()  # no model gives boxes yet
    # the threshold itself is not above it
    assert find_events(_frames([0.9] * 10), 0.9, 10.0, min_event_s=0.0, merge_gap_s=0.0).empty


def test_short_events_are_dropped_and_close_ones_merged():
    above = np.zeros(40)
    above[[2, 3]] = 1  # 0.2 s
    above[10:15] = 1  # 0.5 s, then 0.3 s below
    above[18:21] = 1  # 0.3 s
    above[35:40] = 1  # 0.5 s, up to the last frame
    f = _frames(above)
    ev = find_events(f, 0.5, 10.0, min_event_s=0.5, merge_gap_s=0.0)
    assert ev[["start_frame", "end_frame"]].values.tolist() == [[10, 14], [35, 39]]
    assert ev.end_s.iloc[-1] == pytest.approx(4.0)
    merged = find_events(f, 0.5, 10.0, min_event_s=0.5, merge_gap_s=0.3)  # gap 15-17 (0.3 s) closes
    assert merged[["start_frame", "end_frame"]].values.tolist() == [[10, 20], [35, 39]]
    # merging comes first: two short runs 0.2 s apart make one long enough event
    assert find_events(f, 0.5, 10.0, min_event_s=0.9, merge_gap_s=0.3)[["start_frame", "end_frame"]].values.tolist() == [[10, 20]]
    assert merged.event.tolist() == [0, 1]


def test_times_come_from_the_stored_frame_times_per_video():
    f = pd.concat([_frames([0, 1, 1, 0], "a"), _frames([1, 1, 0, 0], "b")], ignore_index=True)
    times = {"a": np.array([5.0, 5.5, 6.0, 6.5]), "b": 2.0}  # a: 2 fps from 5 s; b: 2 fps from 0
    ev = find_events(f, 0.5, times, min_event_s=0.0, merge_gap_s=0.0).set_index("video")
    assert (ev.loc["a", "start_s"], ev.loc["a", "end_s"]) == (5.5, 6.5)
    assert (ev.loc["b", "start_s"], ev.loc["b", "end_s"]) == (0.0, 1.0)
    assert ev.event.tolist() == [0, 0]  # numbered per video
    assert duration_s(4, times["a"]) == 2.0 and duration_s(4, 2.0) == 2.0


def test_escalated_share_counts_the_clips_overlapping_the_event():
    f = _frames([0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0])
    # clips of 4 frames at stride 2 (end exclusive): those overlapping frames 4-5 start at 2 and 4
    clips = pd.DataFrame({"video": "v", "start_frame": [0, 2, 4, 6, 8], "end_frame": [4, 6, 8, 10, 12],
                          "escalated": [True, True, False, False, False]})
    ev = find_events(f, 0.5, 10.0, min_event_s=0.0, merge_gap_s=0.0, clips=clips)
    assert ev.escalated_share.tolist() == [0.5]


def test_an_empty_event_table_keeps_its_columns_and_bad_settings_are_refused():
    ev = find_events(_frames([0.0] * 5), 0.5, 10.0)
    assert ev.empty and "peak_frame" in ev and str(ev.x0.dtype) == "Float64"
    with pytest.raises(ParameterError, match="min_event_s"):
        EventSettings(min_event_s=-1)
    with pytest.raises(ParameterError, match="frame rate"):
        find_events(_frames([1.0]), 0.5, 0.0)


@pytest.mark.integration
def test_the_score_flow_writes_the_events_table_and_records_its_settings(synthetic_store, tmp_path, prefect_server):
    import shutil

    from conftest import make_checkpoint
    from vad.flows.score import score_flow
    from vad.storage import read_manifest
    from vad.tasks.inference.routing import BatchBudget
    from vad.tasks.inference.scoring import ScoreSettings

    root = tmp_path / "ws"
    shutil.copytree(synthetic_store, root / "stores" / "synthetic.zarr")
    make_checkpoint(synthetic_store, "topheavy", 0, root / "checkpoints" / "synthetic")
    make_checkpoint(synthetic_store, "ae3d", 1, root / "checkpoints" / "synthetic", role="large")
    # no minimum duration and no merging: every run of frames above the threshold is an event
    settings = ScoreSettings(BatchBudget(0.2), events=EventSettings(min_event_s=0.0, merge_gap_s=0.0))
    summary = score_flow(dataset="synthetic", root=str(root), run_id="ev", settings=settings)
    events = pd.read_parquet(root / "scores" / "events", filters=[("dataset", "==", "synthetic"), ("run", "==", "ev")])
    frames = pd.read_parquet(root / "scores" / "frames", filters=[("run", "==", "ev")])
    expected = find_events(frames, 0.95, 25.0, min_event_s=0.0, merge_gap_s=0.0)
    assert summary.events == len(events) == len(expected) > 0
    assert events.drop(columns=["dataset", "run"])[["video", "start_frame", "end_frame"]].values.tolist() == \
        expected[["video", "start_frame", "end_frame"]].values.tolist()
    recorded = read_manifest(root, "synthetic", "ev")["events"]
    assert recorded["min_event_s"] == 0.0 and recorded["threshold"] == 0.95 and recorded["count"] == len(events)
    assert recorded["footage_s"] == pytest.approx(6 * 150 / 25)
    assert f"events {len(events)}" in summary.text()


def test_an_archive_video_gets_its_events_part(camera_workspace, tmp_path):
    import shutil
    from dataclasses import replace

    from vad.storage import read_part
    from vad.tasks.operations.archive import list_archive, score_archive_video

    root, archive, settings = camera_workspace
    root = str(shutil.copytree(root, tmp_path / "ws"))
    # every frame above 0.95 for at least 0.1 s is an event, so that the table has rows to check
    settings = replace(settings, scoring=replace(settings.scoring, events=EventSettings(min_event_s=0.0, merge_gap_s=0.0)))
    video = list_archive(archive)[0]
    score_archive_video(root, "cam", "r", video, settings, key=settings.key(), params=settings.params())
    frames = read_part(root, "frames", "cam", "r", video.video_id)
    events = read_part(root, "events", "cam", "r", video.video_id)
    expected = find_events(frames, 0.95, 25.0, min_event_s=0.0, merge_gap_s=0.0)
    assert events is not None and list(events.columns) == list(expected.columns)
    assert events[["start_frame", "end_frame"]].values.tolist() == expected[["start_frame", "end_frame"]].values.tolist()
    assert settings.params()["events"] == {"min_event_s": 0.0, "merge_gap_s": 0.0}


@pytest.mark.parametrize("command", [["score", "--dataset", "cam"], ["backfill", ".", "--dataset", "cam"]])
def test_the_cli_refuses_a_negative_event_duration_in_one_line(tmp_path, vad_main, command):
    code, _, err = vad_main(*command, "--root", str(tmp_path), "--min-event-s", "-1")
    assert code == 2 and err.startswith("error: ") and "min_event_s" in err and len(err.splitlines()) == 1


def test_a_frame_folder_without_a_rate_is_timed_by_the_models_rate_not_ffmpegs_25_fps_guess(tmp_path):
    from vad.storage import ClipStore
    from vad.tasks.inference.events import EventSettings, run_events, store_timing
    from vad.tasks.sources.ingest import timing_attrs

    coded = timing_attrs(None, 0.0)
    assert store_timing({"fps": 25.0, "frame_count": 20, **coded}) == 25.0  # a file: its own rate
    folder = {"fps": None, "frame_count": 20, "frame_times": {"time_base": "1/25", "steps": [[1, 19]]}, "start_time": 0.0}  # no rate of its own
    assert store_timing(folder, rate=10.0) == 10.0  # the rate the model assumed, not FFmpeg's 25 fps guess
    assert store_timing(folder)[-1] == pytest.approx(0.76)  # a model that assumed none: FFmpeg's times, not a failure
    with pytest.raises(ParameterError, match="frame rate"):  # nothing recorded at all
        store_timing({"fps": None, "frame_count": 20})
    store = ClipStore.create(str(tmp_path / "s.zarr"), dataset="s")
    w = store.begin_video("v", height=2, width=2, channels=1, chunk_frames=4, attrs={"split": "test"})
    w.append(np.zeros((20, 2, 2, 1), np.uint8), np.zeros(20, bool))
    w.finish(np.full(20, -1, np.int8), {"split": "test", "fps": None, "frame_count": 20,
                                         "frame_times": {"time_base": "1/25", "steps": [[1, 19]]}, "start_time": 0.0})
    frames = pd.DataFrame({"video": "v", "frame": np.arange(20), "score": np.r_[np.zeros(5), np.ones(10), np.zeros(5)]})
    events, seconds = run_events(str(tmp_path / "s.zarr"), frames, None, 0.5, EventSettings(0.0, 0.0), fps=10.0)
    assert (events.start_s.tolist(), events.end_s.tolist()) == ([0.5], [1.5])  # frames 5-14 at 10 fps
    assert seconds == {"v": 2.0}
