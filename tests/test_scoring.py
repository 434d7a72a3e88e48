"""Two-pass scoring, frame aggregation and the Parquet score tables."""

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import make_checkpoint
from vad.storage import ClipStore, read_manifest, read_table, write_table
from vad.tasks.runtime.compute import Compute
from vad.tasks.inference.routing import BatchBudget, RouterConfig, TokenBucket
from vad.tasks.inference.scoring import aggregate_frames, score_dataset, score_videos

from vad.errors import ParameterError


def test_frame_scores_are_the_mean_of_covering_clips():
    # clips of 4 frames at starts 0 and 2 with scores 1 and 3 over 8 frames:
    # frames 0-1 only clip 0 (1), 2-3 both (2), 4-5 only clip 1 (3), 6-7 none: the last covered value (3)
    assert aggregate_frames(8, np.array([0, 2]), 4, np.array([1.0, 3.0])).tolist() == [1, 1, 2, 2, 3, 3, 3, 3]
    per_frame = np.array([[0.0, 1.0, 2.0, 3.0], [10.0, 20.0, 30.0, 40.0]])
    assert aggregate_frames(6, np.array([0, 2]), 4, per_frame).tolist() == [0, 1, 6, 11.5, 30, 40]


@pytest.fixture(scope="module")
def pair(synthetic_store, tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return make_checkpoint(synthetic_store, "topheavy", 0, d), make_checkpoint(synthetic_store, "ae3d", 1, d)


def test_budget_0_makes_no_large_call_and_budget_1_escalates_every_clip(synthetic_store, pair):
    small, large = pair
    none = score_videos(synthetic_store, small, large, BatchBudget(0.0))
    n = len(none.clips)
    assert n == 6 * 17  # 6 test videos of 150 frames: floor((150 - 16) / 8) + 1 = 17 clips each
    assert none.large.calls == 0 and not none.clips.escalated.any() and none.clips.large_score.isna().all()
    assert (none.clips.score == none.clips.small_score).all()
    every = score_videos(synthetic_store, small, large, BatchBudget(1.0))
    assert every.large.calls == n and every.clips.escalated.all()
    assert np.allclose(every.clips.score, every.clips.large_score)
    assert len(every.frames) == 6 * 150 and every.frames.escalated.all()
    # the small model's columns do not depend on the budget
    assert np.allclose(every.clips.small_score, none.clips.small_score)


def test_a_bucket_of_3_without_refill_escalates_3_clips_per_video(synthetic_store, pair):
    small, large = pair
    r = score_videos(synthetic_store, small, large, TokenBucket(3, 0), router=RouterConfig(margin=1.0))  # every clip in the gray zone
    assert r.clips.groupby("video").escalated.sum().tolist() == [3] * 6
    assert r.large.calls == 18
    held = r.clips[r.clips.budget_held]
    assert len(held) == len(r.clips) - 18 and (held.reasons.str.contains("gray_zone")).all()


def test_frame_labels_join_and_frame_mode_changes_only_frame_scores(synthetic_store, pair):
    small, large = pair
    a = score_videos(synthetic_store, small, large, BatchBudget(0.2))
    b = score_videos(synthetic_store, small, large, BatchBudget(0.2), frame_mode="frame")
    store = ClipStore.open(synthetic_store)
    labels = np.concatenate([store.video(v).labels for v in store.video_ids(split="test")])
    assert a.frames.label.astype(int).tolist() == labels.tolist()
    kept = b.clips.drop(columns=["small_frame_scores", "large_frame_scores"])  # frame mode keeps them for a replay
    assert a.clips.equals(kept) and not np.allclose(a.frames.score, b.frames.score)


def test_checkpoints_that_cut_clips_differently_are_refused(synthetic_store, pair, tmp_path):
    small, _ = pair
    other = make_checkpoint(synthetic_store, "ae3d", 2, tmp_path, stride=4)
    with pytest.raises(ParameterError, match="cut clips differently"):
        score_videos(synthetic_store, small, other, BatchBudget(0.2))


def _workspace(tmp_path, synthetic_store, pair):
    import shutil

    root = tmp_path / "ws"
    shutil.copytree(synthetic_store, root / "stores" / "synthetic.zarr")
    (root / "checkpoints" / "synthetic").mkdir(parents=True)
    small, large = pair
    shutil.copy(small.path, root / "checkpoints" / "synthetic" / "small-topheavy.pt")
    shutil.copy(large.path, root / "checkpoints" / "synthetic" / "large-ae3d.pt")
    return root


def test_tables_round_trip_with_dtypes_and_a_rerun_replaces_its_rows(synthetic_store, pair, tmp_path):
    root = _workspace(tmp_path, synthetic_store, pair)
    s = score_dataset(str(root), "synthetic", budget=BatchBudget(0.25), run_id="r1")
    score_dataset(str(root), "synthetic", budget=BatchBudget(0.25), run_id="r1")  # same id: replaced, not appended
    score_dataset(str(root), "synthetic", budget=BatchBudget(0.5), run_id="r2")
    clips = pd.read_parquet(root / "scores" / "clips", filters=[("dataset", "==", "synthetic")])
    assert len(clips) == 2 * s.clips and sorted(clips.run.unique()) == ["r1", "r2"]
    assert clips.groupby("run", observed=True).escalated.mean().round(2).to_dict() == {"r1": 0.25, "r2": 0.5}
    frames = read_table(root, "frames", dataset="synthetic", run_id="r1")
    assert len(frames) == s.frames == 900
    assert str(frames.label.dtype) == "Int8" and frames.frame.dtype == np.int32 and frames.score.dtype == np.float64
    assert clips.escalated.dtype == bool and clips["clip"].dtype == np.int32
    assert clips[~clips.escalated].large_score.isna().all() and clips[clips.escalated].large_score.notna().all()
    manifest = read_manifest(root, "synthetic", "r1")
    assert manifest["large_calls"] == manifest["escalated"] == s.escalated and manifest["budget"] == {"policy": "batch", "fraction": 0.25}
    assert {"torch", "video-anomaly-router"} <= set(manifest["versions"])


def test_an_interrupted_write_leaves_no_partial_file_and_a_rerun_completes(synthetic_store, pair, tmp_path, monkeypatch):
    root = _workspace(tmp_path, synthetic_store, pair)
    real = pq.write_table

    def half_then_interrupt(table, where, **kw):
        real(table.slice(0, 10), where, **kw)  # part of the file is on disk ...
        raise KeyboardInterrupt  # ... when the run is killed

    monkeypatch.setattr(pq, "write_table", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        score_dataset(str(root), "synthetic", budget=BatchBudget(0.2), run_id="cut")
    leftovers = [p for p in (root / "scores").rglob("*") if p.is_file()]
    assert leftovers == []
    monkeypatch.setattr(pq, "write_table", real)
    # a temporary file left by a killed process is hidden from readers and cleared by the next write
    from vad.storage._locks import HOST

    # pid 4194304 is above Linux's largest pid_max: never a live process
    stale = root / "scores" / "clips" / "dataset=synthetic" / "run=cut" / f".part-0.parquet.4194304@{HOST}.x.tmp"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"PAR1 half")
    s = score_dataset(str(root), "synthetic", budget=BatchBudget(0.2), run_id="cut")
    assert len(read_table(root, "clips", run_id="cut")) == s.clips
    assert not stale.exists()


def test_table_writes_refuse_partition_columns_and_bad_run_ids(tmp_path):
    with pytest.raises(ParameterError, match="partition"):
        write_table(tmp_path, "clips", "d", "r", pd.DataFrame({"dataset": ["d"]}))
    with pytest.raises(ParameterError, match="run id"):
        write_table(tmp_path, "clips", "d", "../up", pd.DataFrame({"x": [1]}))


def test_report_collects_metrics_sweep_and_plots_of_scored_runs(synthetic_store, pair, tmp_path):
    from vad.tasks.evaluation.report import RunRef, build_report

    root = _workspace(tmp_path, synthetic_store, pair)
    score_dataset(str(root), "synthetic", budget=BatchBudget(0.2), run_id="r")
    score_dataset(str(root), "synthetic", budget=BatchBudget(1.0), run_id="all")
    out = build_report(root, [RunRef("synthetic", "r", sweep_run_id="all")], name="rep")
    assert out == root / "reports" / "rep"
    names = {p.name for p in out.iterdir()}
    assert {"metrics.parquet", "per_video.parquet", "pareto.parquet", "report.md", "report.html",
            "pareto-synthetic.png", "roc-synthetic-r.png", "timelines-synthetic-r.png"} <= names
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert metrics.scores.tolist() == ["small only", "routed"] and (metrics.protocol == "standard").all()
    pareto = pd.read_parquet(out / "pareto.parquet")
    # the sweep's 0.2 budget reproduces the real 0.2-budget run
    real = metrics.set_index("scores").loc["routed", "micro_auc"]
    assert pareto.set_index(["policy", "setting"]).loc[("batch", "0.2"), "micro_auc"] == pytest.approx(real)
    assert pareto.pareto.any() and "Simulated offline" in (out / "report.md").read_text()
    assert not [p for p in (root / "reports").iterdir() if p.name.startswith(".")]  # no temporary folder left
    # the papers' protocol variants are extra rows, labelled, never the headline
    from vad.tasks.evaluation.metrics import Protocol, evaluate

    variants = pd.read_parquet(out / "variants.parquet")
    assert len(variants) == 3 * 2 and variants.protocol.str.startswith("NON-STANDARD").all()
    frames = read_table(root, "frames", run_id="r")
    minmax = variants[(variants.protocol == Protocol(minmax=True).label) & (variants.scores == "routed")].micro_auc
    assert minmax.iloc[0] == pytest.approx(evaluate(frames, "score", Protocol(minmax=True))[0]["micro_auc"])
    assert "Protocol variants (labelled, not the headline)" in (out / "report.md").read_text()


def test_rewriting_a_run_removes_its_old_manifest_first(synthetic_store, tmp_path, monkeypatch):
    """A run id written again, and killed between its tables and its run.json, leaves no run.json
    that would describe the old tables as the new run."""
    import vad.tasks.records as records
    from vad.storage import read_manifest

    from vad.errors import NotFoundError

    root = tmp_path / "ws"
    small = make_checkpoint(synthetic_store, "topheavy", 0, tmp_path)
    result = score_videos(synthetic_store, small, None, BatchBudget(0.0), videos=["test_00"])
    records.write_run(str(root), "synthetic", "r1", result, small, None, BatchBudget(0.0))
    assert read_manifest(root, "synthetic", "r1")["clips"] == len(result.clips)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies while writing the tables

    monkeypatch.setattr(records, "write_table", crash)
    with pytest.raises(KeyboardInterrupt):
        records.write_run(str(root), "synthetic", "r1", result, small, None, BatchBudget(0.0))
    with pytest.raises(NotFoundError):
        read_manifest(root, "synthetic", "r1")
    assert not (root / "scores" / "runs" / "dataset=synthetic" / "run=r1" / "run.lock").exists()


def test_a_replayed_run_gives_what_a_real_run_gives(synthetic_store, tmp_path):
    """Routed runs replayed from one run where the large model scored every clip (the benchmarks'
    budget sweeps) write the same clip and frame scores as real runs at those budgets."""
    from vad.tasks.inference.scoring import ReplayMap, VideoMap

    small = make_checkpoint(synthetic_store, "topheavy", 0, tmp_path)
    large = make_checkpoint(synthetic_store, "ae3d", 1, tmp_path)
    every = score_videos(synthetic_store, small, large, BatchBudget(1.0))
    large_all = VideoMap().pass2(synthetic_store, large, {p.video: p.starts for p in every.passes}, Compute())
    for fraction in (0.1, 0.3):
        real = score_videos(synthetic_store, small, large, BatchBudget(fraction), frame_mode="frame")
        replay = ReplayMap(every.passes, large_all)
        again = score_videos(synthetic_store, small, large, BatchBudget(fraction), frame_mode="frame", mapper=replay)
        assert replay.pass2_wall < 1.0 and again.large.calls == real.large.calls > 0
        pd.testing.assert_frame_equal(again.clips, real.clips)
        pd.testing.assert_frame_equal(again.frames, real.frames)
