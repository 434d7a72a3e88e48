"""Whole-flow and CLI runs over the tiny synthetic dataset, on the session's Prefect server."""

import os
import shutil

import pytest
from typer.testing import CliRunner
from vad.flows.cli import app
from vad.flows.ingest import ingest_flow
from vad.storage import ClipStore

pytestmark = pytest.mark.integration


def test_flow_ingests_every_video_and_reports_the_bad_one(tiny_dataset, tmp_path, prefect_server):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (data / "test" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    state = ingest_flow(source=str(data), dataset="tiny", root=str(tmp_path / "ws"), return_state=True)
    summary = state.result(raise_on_failure=False)
    assert state.is_failed()
    assert list(summary.failures) == ["broken"] and "broken.mp4" in summary.failures["broken"]
    assert sorted(r.video_id for r in summary.results) == ["normal_00", "normal_01", "test_00", "test_01"]
    store = ClipStore.open(summary.store)
    assert store.video_ids() == ["normal_00", "normal_01", "test_00", "test_01"]
    assert store.video("test_00").labels.sum() > 0

    (data / "test" / "broken.mp4").unlink()
    again = ingest_flow(source=str(data), dataset="tiny", root=str(tmp_path / "ws"), return_state=True)
    assert again.is_completed()
    assert again.result().skipped == 4 and again.result().frames == 0


def test_cli_synth_then_ingest(tmp_path, prefect_server):
    runner = CliRunner()
    out = tmp_path / "syn"
    made = runner.invoke(app, ["synth", str(out), "--train", "1", "--test", "1", "--frames", "24", "--size", "32x48"])
    assert made.exit_code == 0, made.output
    assert sorted(p.name for p in out.rglob("*.mp4")) == ["normal_00.mp4", "test_00.mp4"]
    ran = runner.invoke(app, ["ingest", str(out), "--dataset", "syn", "--root", str(tmp_path / "ws"), "--gray"])
    assert ran.exit_code == 0, ran.output
    assert "ingested 2, skipped 0 (unchanged), failed 0; 48 frames" in ran.output
    video = ClipStore.open(str(tmp_path / "ws" / "stores" / "syn.zarr")).video("test_00")
    assert video.frames.shape == (24, 32, 48, 1)


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--dataset", "bad/name"], "'bad/name'"), (["--dataset", "ok", "--size", "big"], "HEIGHTxWIDTH")],
)
def test_cli_reports_bad_parameters_in_one_line(tmp_path, tiny_dataset, vad_main, args, needle):
    code, _, err = vad_main("ingest", str(tiny_dataset), "--root", str(tmp_path), *args)
    assert code == 2
    assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--since", "2026-13-01"], "--since must be a date"), (["--since", "2026-02-01", "--until", "2026-01-01"], "after"),
     (["--runner", "ray"], "task runner"), (["--budget", "2"], "budget"), (["--run-id", "a/b"], "run id"),
     (["--device", "cuda:7"], "CUDA device"), (["--device", "tpu"], "device must be auto, cpu, cuda or cuda:N")],
)
def test_backfill_cli_reports_bad_parameters_in_one_line(tmp_path, vad_main, args, needle):
    code, _, err = vad_main("backfill", str(tmp_path), "--dataset", "cam", "--root", str(tmp_path), *args)
    assert code == 2, err
    assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1
    assert "Traceback" not in err


def test_cli_keeps_the_temporary_prefect_database_in_the_workspace(tmp_path, monkeypatch):
    from vad.flows.cli import _prefect_defaults

    for var in ("PREFECT_HOME", "PREFECT_API_URL"):
        monkeypatch.delenv(var, raising=False)
    _prefect_defaults(str(tmp_path / "ws"))
    assert os.environ["PREFECT_HOME"] == str(tmp_path / "ws" / ".prefect")
    assert (tmp_path / "ws" / ".prefect").is_dir()
    # A configured server (or home) wins: nothing is changed.
    monkeypatch.delenv("PREFECT_HOME")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    _prefect_defaults(str(tmp_path / "other"))
    assert "PREFECT_HOME" not in os.environ and not (tmp_path / "other").exists()


def test_train_flow_writes_a_calibrated_checkpoint_in_the_workspace(synthetic_store, tmp_path, prefect_server):
    from vad.flows.train import train_flow
    from vad.tasks.runtime.checkpoint import load_checkpoint
    from vad.tasks.learning.training import TrainConfig

    root = tmp_path / "ws"
    shutil.copytree(synthetic_store, root / "stores" / "synthetic.zarr")
    result = train_flow(dataset="synthetic", root=str(root), config=TrainConfig(arch="topheavy", epochs=1, size=(32, 32)))
    assert result.checkpoint == root / "checkpoints" / "synthetic" / "small-topheavy.pt"
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.arch == "topheavy" and ckpt.dataset == "synthetic"
    assert ckpt.training["stopped"] == "epochs" and len(ckpt.training["history"]) == 1
    assert ckpt.input.height == 32 and ckpt.source["frame_size"] == [32, 32, 1]
    assert ckpt.calibration.threshold > 0 and {"torch", "video-anomaly-router"} <= set(ckpt.versions)


def test_score_flow_writes_a_run_and_the_cli_prints_it(synthetic_store, tmp_path, prefect_server):
    import pandas as pd
    from conftest import make_checkpoint as _checkpoint
    from vad.flows.score import score_flow
    from vad.tasks.inference.routing import BatchBudget, RouterConfig, TokenBucket
    from vad.tasks.inference.scoring import ScoreSettings

    root = tmp_path / "ws"
    shutil.copytree(synthetic_store, root / "stores" / "synthetic.zarr")
    ckpts = root / "checkpoints" / "synthetic"
    ckpts.mkdir(parents=True)
    small = _checkpoint(synthetic_store, "topheavy", 0, tmp_path)
    large = _checkpoint(synthetic_store, "ae3d", 1, tmp_path)
    shutil.copy(small.path, ckpts / "small-topheavy.pt")
    shutil.copy(large.path, ckpts / "large-ae3d.pt")
    summary = score_flow(dataset="synthetic", root=str(root), run_id="flow1",
                         settings=ScoreSettings(TokenBucket(2, 0), RouterConfig(margin=1.0)))
    assert summary.escalated == summary.large_calls == 2 * 6  # every clip fires; 2 tokens per video
    clips = pd.read_parquet(root / "scores" / "clips", filters=[("run", "==", "flow1")])
    assert len(clips) == summary.clips == 102 and clips.escalated.sum() == 12

    # every router setting reaches the run from the flow's parameters
    from vad.storage import read_manifest

    ood = RouterConfig(margin=1.0, ood_quantile=0.5, instability_quantile=0.9, signals=("ood",))
    only_ood = score_flow(dataset="synthetic", root=str(root), run_id="ood", settings=ScoreSettings(BatchBudget(0.5), ood))
    router = read_manifest(root, "synthetic", "ood")["router"]
    assert router == {"margin": 1.0, "ood_quantile": 0.5, "instability_quantile": 0.9, "signals": ["ood"], "band": "rank"}
    ood_clips = pd.read_parquet(root / "scores" / "clips", filters=[("run", "==", "ood")])
    assert not ood_clips.signal_gray_zone.any() and ood_clips.signal_ood.any()  # margin 1.0 would fire everywhere
    assert only_ood.clips == len(ood_clips)

    result = CliRunner().invoke(app, ["score", "--dataset", "synthetic", "--root", str(root), "--budget", "0", "--run-id", "cli"])
    assert result.exit_code == 0, result.output
    assert "escalated 0 (0.0%); large-model calls 0" in result.output and "run=cli" in result.output


def test_pipeline_flow_scores_and_reports_with_the_checkpoints_it_finds(synthetic_store, tmp_path, prefect_server):
    from conftest import make_checkpoint as _checkpoint
    from vad.flows.pipeline import pipeline_flow

    root = tmp_path / "ws"
    shutil.copytree(synthetic_store, root / "stores" / "synthetic.zarr")
    ckpts = root / "checkpoints" / "synthetic"
    ckpts.mkdir(parents=True)
    shutil.copy(_checkpoint(synthetic_store, "topheavy", 0, tmp_path).path, ckpts / "small-topheavy.pt")
    shutil.copy(_checkpoint(synthetic_store, "ae3d", 1, tmp_path).path, ckpts / "large-ae3d.pt")
    summary = pipeline_flow(datasets=["synthetic"], root=str(root), budget=0.3, report_name="t")
    assert summary.report == str(root / "reports" / "t") and summary.failures == {}
    assert summary.headline.scores.tolist() == ["small only", "routed"]
    assert sorted(p.name for p in ckpts.iterdir()) == ["large-ae3d.pt", "small-topheavy.pt"]  # nothing trained
    assert (root / "reports" / "t" / "pareto.parquet").exists()
    assert {p.name for p in (root / "scores" / "runs" / "dataset=synthetic").iterdir()} == {"run=t-all", "run=t-budget-0.3"}

    # the report and each run's summary are artifacts of the flow runs that made them
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = ["report-t", "report-t-headline", "score-synthetic-t-budget-0-3", "score-synthetic-t-all-counts"]
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    by_key = {a.key: a for a in found}
    assert sorted(by_key) == sorted(keys) and all(a.flow_run_id is not None for a in found)
    assert by_key["report-t"].type == "markdown" and "Headline" in by_key["report-t"].data
    assert by_key["report-t-headline"].type == "table" and "routed" in str(by_key["report-t-headline"].data)
