"""The report a user reads: footage without labels, a mix, and what the page shows."""

import re
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import make_checkpoint
from vad.storage import run_dir, write_table
from vad.tasks.inference.events import find_events, store_timing
from vad.tasks.evaluation.report import (
    RunRef,
    build_report,
    routing_sentence,
    setting_lines,
    strip_frames,
    timeline_videos,
    trim_pareto,
)
from vad.tasks.inference.routing import BatchBudget
from vad.tasks.inference.scoring import score_dataset


@pytest.fixture(scope="module")
def workspace(synthetic_store, tmp_path_factory):
    """A routed run `r` (budget 0.2) and a budget-1 run `all` of the synthetic dataset."""
    root = tmp_path_factory.mktemp("report-ws")
    shutil.copytree(synthetic_store, root / "stores" / "synthetic.zarr")
    make_checkpoint(synthetic_store, "topheavy", 0, root / "checkpoints" / "synthetic")
    make_checkpoint(synthetic_store, "ae3d", 1, root / "checkpoints" / "synthetic", role="large")
    score_dataset(str(root), "synthetic", budget=BatchBudget(0.2), run_id="r")
    score_dataset(str(root), "synthetic", budget=BatchBudget(1.0), run_id="all")
    return root


def _relabel(root, run, unlabelled, *, burst=None):
    """Copy run `run` as `<run>-u` with the labels of `unlabelled` videos unknown (null) and, with
    `burst` (video, first, last), those frames scoring 0.99 (an event), its events found again."""
    from vad.storage import ClipStore, read_manifest, write_manifest

    new = f"{run}-u"
    frames = pd.read_parquet(run_dir(root, "frames", "synthetic", run))
    clips = pd.read_parquet(run_dir(root, "clips", "synthetic", run))
    frames.loc[frames.video.isin(unlabelled), "label"] = pd.NA
    if burst:
        video, a, b = burst
        frames.loc[(frames.video == video) & frames.frame.between(a, b), "score"] = 0.99
    store = ClipStore.open(str(root / "stores" / "synthetic.zarr"))
    timing = {v: store_timing(store.video(v).attrs) for v in frames.video.unique()}
    write_table(root, "frames", "synthetic", new, frames)
    write_table(root, "clips", "synthetic", new, clips)
    write_table(root, "events", "synthetic", new, find_events(frames, 0.95, timing, clips=clips))
    write_manifest(root, "synthetic", new, {**read_manifest(root, "synthetic", run), "run": new})
    return new


def _images_are_embedded(page: str) -> bool:
    sources = re.findall(r'<img[^>]* src="([^"]*)"', page)
    return bool(sources) and all(s.startswith("data:image/png;base64,") for s in sources)


def test_a_report_of_footage_without_labels_shows_timelines_events_and_alarms(workspace):
    videos = sorted(pd.read_parquet(run_dir(workspace, "frames", "synthetic", "r")).video.unique())
    run = _relabel(workspace, "r", videos, burst=(videos[1], 40, 70))
    out = build_report(workspace, [RunRef("synthetic", run, sweep_run_id="all")], name="nolabels")
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert "No video has labels" in md and "routing at" not in md  # no metrics, no claim about them
    assert not (out / "pareto.parquet").exists() and not list(out.glob("roc-*.png"))
    alarms = pd.read_parquet(out / "alarms.parquet").iloc[0]
    # 6 videos of 150 frames at 25 fps: 36 s of footage; the burst is one event (and maybe others)
    assert alarms.labelled_videos == 0 and alarms.footage_h == pytest.approx(36 / 3600)
    assert alarms.events >= 1 and alarms.events_per_hour == pytest.approx(alarms.events / (36 / 3600))
    assert (out / f"timelines-synthetic-{run}.png").exists() and (out / f"events-synthetic-{run}.png").exists()
    assert f"{videos[1]}" in md and "every video (6)" in md
    assert _images_are_embedded(page) and "<pre>" in page


def test_a_mix_is_evaluated_on_its_labelled_videos_and_says_which(workspace):
    videos = sorted(pd.read_parquet(run_dir(workspace, "frames", "synthetic", "r")).video.unique())
    run = _relabel(workspace, "r", videos[3:])
    out = build_report(workspace, [RunRef("synthetic", run, sweep_run_id="all")], name="mix")
    md = (out / "report.md").read_text()
    assert f"labels for 3 of 6 videos ({', '.join(videos[:3])}); no labels: {', '.join(videos[3:])}" in md
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert (metrics.frames == 3 * 150).all() and (metrics.unlabelled_frames == 3 * 150).all()
    assert (out / "pareto.parquet").exists() and "routing at 20%" in md


def test_the_report_names_its_runs_and_prints_settings_as_text(workspace):
    out = build_report(workspace, [RunRef("synthetic", "r", sweep_run_id="all")], name="plain")
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    first = md.splitlines()[0]
    assert first.startswith("# Video anomaly report: synthetic run r (small topheavy, large ae3d); 20")
    assert "router.margin: 0.05" in md and "events.min_event_s: 0.5" in md and "budget.fraction: 0.2" in md
    assert "{'" not in md  # no Python dicts
    assert re.search(r"routing at 20% \(\d+\.\d% of clips escalated\) (raised|lowered|left) micro AUC .* of the large model's time", md)
    full = pd.read_parquet(out / "pareto.parquet")
    section = md[md.index("### Cost against quality"):]
    shown = [line for line in section.splitlines() if line.startswith("| batch") or line.startswith("| small") or line.startswith("| large")]
    assert len(shown) == len(trim_pareto(full, [0.2])) < len(full)
    assert _images_are_embedded(page) and page.count("<img") == 4  # timelines, events or not, ROC, Pareto


def test_timelines_of_many_videos_are_the_top_ones_by_peak():
    frames = pd.DataFrame({"video": np.repeat([f"v{i}" for i in range(5)], 3), "frame": np.tile(range(3), 5),
                           "score": [0.1, 0.2, 0.1, 0.9, 0, 0, 0.5, 0, 0, 0.95, 0, 0, 0.3, 0, 0]})
    assert timeline_videos(frames, limit=2) == (["v3", "v1"], True)
    assert timeline_videos(frames, limit=5) == ([f"v{i}" for i in range(5)], False)


def test_small_helpers_by_hand():
    assert strip_frames(10, 6, 14, 100) == [6, 8, 10, 12, 14]
    assert strip_frames(1, 0, 2, 3) == [0, 1, 2]  # clipped to the video, no repeats
    assert setting_lines({"router": {"margin": 0.05, "signals": ["ood", "gray_zone"]}, "frame_mode": "clip", "x": None}) == [
        "router.margin: 0.05", "router.signals: ood, gray_zone", "frame_mode: clip", "x: none"]
    m = {"budget": {"policy": "batch", "fraction": 0.2}, "escalation_rate": 0.2,
         "seconds": {"pass1": 10.0, "routing": 0.0, "pass2": 18.0}}
    assert routing_sentence(0.910, 0.954, m, large_all_s=100.0) == (
        "routing at 20% (20.0% of clips escalated) raised micro AUC from 0.910 to 0.954 at 0.28 of the large model's time.")
    # without a budget-1 run the large-only time is this run's pass 2 over the share escalated: 18 / 0.2 = 90 s
    assert "at 0.31 of the large model's time" in routing_sentence(0.9, 0.8, m)
    table = pd.DataFrame({"policy": ["small only", "large only", "batch", "batch", "batch"],
                          "setting": ["-", "-", "0.1", "0.2", "0.3"], "pareto": [True, False, False, False, True]})
    assert trim_pareto(table, [0.2]).setting.tolist() == ["-", "-", "0.2", "0.3"]


def test_per_video_metrics_have_one_row_per_video_with_both_views():
    import pandas as pd

    from vad.tasks.evaluation.report import RunRef, metrics_of

    rows = [{"dataset": "d", "run": "r", "video": v, "frames": n, "anomalous_frames": a, "defined": a > 0,
             "scores": view, "auc": auc, "ap": auc}
            for v, n, a, auc0 in (("a", 37, 16, 0.9), ("b", 40, 0, float("nan")), ("c", 52, 20, 0.7))
            for view, auc in (("small only", auc0), ("routed", auc0 + 0.05 if a else float("nan")))]
    wide = metrics_of(pd.DataFrame(rows), RunRef("d", "r"))
    assert wide.video.tolist() == ["a", "b", "c"]  # 3 videos, 3 rows (not videos x frame counts x ...)
    assert wide["auc (routed)"].round(2).tolist()[::2] == [0.95, 0.75] and wide["auc (small only)"].isna().tolist() == [False, True, False]
