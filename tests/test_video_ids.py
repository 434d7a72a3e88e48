"""Any file name ingests (issue 17, item 2): one rule for a safe, stable video id from any path,
clashes resolved and reported, the original name kept, an unusable video failing alone in one line."""

import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ramp_frames, write_video
from vad.storage import ClipStore
from vad.tasks.sources.datasets import discover, survey
from vad.tasks.sources.datasets._base import unique_ids, video_id_for
from vad.tasks.sources.ingest import Preprocess

from vad.errors import DatasetLayoutError, FFmpegError

TRAIN = "train/Camera 1 2026-10-01.mp4"
NAMES = (TRAIN, "café-entrée.mp4", "a b.mp4", "a-b.mp4", "監視.mp4", "zarr.json.mp4")


def test_the_id_rule():
    assert video_id_for("Camera 1 2026-10-01.mp4") == "Camera-1-2026-10-01"
    assert video_id_for("café-entrée.mp4") == "cafe-entree"
    assert video_id_for("Straße/Ærø (north).MOV") == "Strasse_AEro-north"
    assert video_id_for("2026-11-20/cam 1 (north).mp4") == "2026-11-20_cam-1-north"
    assert video_id_for("frames.v2") == "frames.v2"  # not a video extension: a frame folder's name
    long = video_id_for("x" * 300 + ".mp4")
    assert len(long) <= 120 and long == video_id_for("x" * 300 + ".mp4") and long != video_id_for("x" * 301 + ".mp4")
    with pytest.raises(DatasetLayoutError, match="no letter or digit"):
        video_id_for("監視.mp4")


def test_clashes_resolve_the_same_way_in_any_order():
    candidates = {"a b.mp4": "a-b", "a-b.mp4": "a-b", "A-B.avi": "A-B", "x.mp4": "x", "監視.mp4": None}
    ids, warnings = unique_ids(candidates)
    assert ids == unique_ids(dict(reversed(list(candidates.items()))))[0]
    assert ids["A-B.avi"] == "A-B" and ids["x.mp4"] == "x"  # the first path keeps the id
    assert re.fullmatch(r"a-b-[0-9a-f]{6}", ids["a b.mp4"]) and re.fullmatch(r"a-b-[0-9a-f]{6}", ids["a-b.mp4"])
    assert re.fullmatch(r"video-[0-9a-f]{6}", ids["監視.mp4"])
    assert len(set(ids.values())) == 5 and len(warnings) == 3
    # A suffix depends on the file's own path only, not on which other files are there.
    assert unique_ids({"a-b.mp4": "a-b", "a b.mp4": "a-b"})[0]["a-b.mp4"] == ids["a-b.mp4"]


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    """A camera-export folder: spaces, accents, two names that make one id, a name with no ASCII
    letter, a name the store reserves; labels.csv names a video by its file name."""
    root = tmp_path_factory.mktemp("awkward")
    for name in NAMES:
        write_video(root / name, ramp_frames(24, 64, 64))
    (root / "labels.csv").write_text("video,frame,label\n" + "".join(f"café-entrée.mp4,{i},{int(i > 12)}\n" for i in range(24)))
    return root


def test_discovery_lists_every_usable_video_and_one_line_for_the_other(awkward):
    found = survey(awkward)
    ids = {v.relative: v.video_id for v in found.videos}
    assert ids[TRAIN] == "Camera-1-2026-10-01" and ids["café-entrée.mp4"] == "cafe-entree"
    assert {ids["a b.mp4"], ids["a-b.mp4"]} == {"a-b", f"a-b-{ids['a-b.mp4'][-6:]}"}
    assert re.fullmatch(r"video-[0-9a-f]{6}", ids["監視.mp4"])
    assert list(found.failures) == ["zarr.json.mp4"] and "reserves" in found.failures["zarr.json.mp4"]
    assert all("\n" not in line for line in [*found.failures.values(), *found.warnings])
    assert sum("both make video id 'a-b'" in w for w in found.warnings) == 1
    assert sum("監視.mp4" in w for w in found.warnings) == 1
    by_id = {v.video_id: v for v in found.videos}
    assert by_id["cafe-entree"].labels.tolist() == [int(i > 12) for i in range(24)]
    # The strict listing (benchmarks, scripts) refuses the dataset, naming the file.
    with pytest.raises(DatasetLayoutError, match="zarr.json"):
        discover(awkward)


def test_awkward_names_ingest_through_the_flow_and_reach_the_score_tables(awkward, prefect_server, tmp_path):
    from conftest import make_checkpoint
    from vad.flows.ingest import ingest_flow
    from vad.tasks.inference.routing import BatchBudget
    from vad.tasks.inference.scoring import score_videos

    state = ingest_flow(source=str(awkward), dataset="awkward", root=str(tmp_path), prep=Preprocess(size=(32, 32), gray=True),
                        return_state=True)
    summary = state.result(raise_on_failure=False)
    assert state.is_failed() and sorted(r.video_id for r in summary.results) == sorted(
        v.video_id for v in survey(awkward).videos)
    assert list(summary.failures) == ["zarr.json.mp4"] and len(summary.warnings) == 2
    store = ClipStore.open(summary.store)
    assert store.video("cafe-entree").attrs["source_relpath"] == "café-entrée.mp4"
    assert store.video("Camera-1-2026-10-01").attrs["source_relpath"] == TRAIN

    small = make_checkpoint(summary.store, "topheavy", 0, tmp_path / "ckpt")
    large = make_checkpoint(summary.store, "ae3d", 1, tmp_path / "ckpt", role="large")
    clips = score_videos(summary.store, small, large, BatchBudget(0.25)).clips
    assert dict(zip(clips["video"], clips["source"]))["cafe-entree"] == "café-entrée.mp4"


def test_an_expected_failure_is_logged_in_one_line_after_the_retries(awkward, prefect_server, tmp_path, monkeypatch):
    """A transient error (a stalled source) is retried, then Prefect logs it: without a traceback."""
    import vad.flows.ingest as flows_ingest

    def stalled(url, source, *args, **kwargs):
        raise FFmpegError(source.uri, "no frame from FFmpeg for 60 s (a stalled source?)", transient=True)

    monkeypatch.setattr(flows_ingest, "ingest_video", stalled)
    # the same two retries without the 2 s waits between them (the waits are not what this checks)
    monkeypatch.setattr(flows_ingest, "ingest_video_task", flows_ingest.ingest_video_task.with_options(retry_delay_seconds=0))
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("prefect.task_runs")
    # the CLI's commands silence Prefect's loggers; a CLI test run earlier in this process may have
    saved = logger.level, logger.disabled
    logger.setLevel(logging.INFO)
    logger.disabled = False
    logger.addHandler(handler)
    try:
        source = tmp_path / "one"
        source.mkdir()
        shutil.copy(awkward / "café-entrée.mp4", source / "café-entrée.mp4")
        summary = flows_ingest.ingest_flow(source=str(source), dataset="stalled", root=str(tmp_path), return_state=True).result(
            raise_on_failure=False)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.disabled = saved[1]
    assert "stalled source" in summary.failures["cafe-entree"]
    final = [r for r in records if "Retries are exhausted" in r.getMessage()]
    assert len(final) == 1 and final[0].exc_info is None and "\n" not in final[0].getMessage()


def test_vad_ingest_of_awkward_names(awkward, tmp_path, prefect_api_env):
    """The installed entry point, as a user runs it: one line per problem, no traceback. (On the
    session's Prefect API: the CLI with its own temporary server is tests/test_cli_signals.py's.)"""
    vad = Path(sys.executable).with_name("vad")
    proc = subprocess.run([str(vad), "ingest", str(awkward), "--dataset", "awkward", "--root", str(tmp_path / "ws")],
                          capture_output=True, text=True, env=prefect_api_env, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    assert "ingest awkward: 6 videos; ingested 5, skipped 0 (unchanged), failed 1" in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert sum(line.startswith("FAILED zarr.json.mp4: ") for line in errors) == 1
    assert sum(line.startswith("warning: ") for line in errors) == 2
    assert ClipStore.open(str(tmp_path / "ws" / "stores" / "awkward.zarr")).video("cafe-entree").n_frames == 24
