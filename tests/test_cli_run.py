"""`vad run` as a user meets it: mistakes it can see from the command line and the workspace are
refused in one line before Prefect starts (no temporary server, no database); it takes the scoring
options of `vad score`; and it says what each stage did instead of minutes of silence."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

VAD = Path(sys.executable).with_name("vad")


@pytest.fixture
def cam_root(tmp_path, synthetic_store) -> Path:
    """A workspace whose dataset `cam` has a store (6 train, 6 test videos) and no checkpoint yet."""
    root = tmp_path / "ws"
    shutil.copytree(synthetic_store, root / "stores" / "cam.zarr")
    return root


def _refused(vad_main, root: Path, *args: str) -> str:
    code, out, err = vad_main(*args, "--root", str(root))
    assert code == 2 and out == "", err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert not list(root.rglob("*.db")) if root.exists() else True  # Prefect's database: never started
    return err


def test_run_refuses_a_dataset_with_no_store_before_prefect_starts(tmp_path, vad_main):
    err = _refused(vad_main, tmp_path / "ws", "run", "--dataset", "nope")
    assert "stores/nope.zarr" in err and "vad ingest" in err


def test_run_refuses_a_source_with_no_videos_before_prefect_starts(tmp_path, vad_main):
    (tmp_path / "empty").mkdir()
    err = _refused(vad_main, tmp_path / "ws", "run", "--dataset", "x", "--source", str(tmp_path / "empty"))
    assert "no videos found" in err and str(tmp_path / "empty") in err


@pytest.mark.parametrize(("args", "needle"), [
    (["--frame-mode", "bogus"], "frame mode"),
    (["--precision", "float8"], "float8"),
    (["--batch", "0"], "batch"),
    (["--device", "tpu"], "tpu"),
    (["--small-arch", "nonesuch"], "nonesuch"),
])
def test_run_checks_its_scoring_and_training_settings_first(cam_root, vad_main, args, needle):
    assert needle in _refused(vad_main, cam_root, "run", "--dataset", "cam", *args)


def test_run_refuses_several_checkpoints_none_the_default_naming_them(cam_root, vad_main):
    folder = cam_root / "checkpoints" / "cam"
    folder.mkdir(parents=True)
    for name in ("small-topheavy.pt", "small-vae3d.pt"):
        (folder / name).write_bytes(b"")
    err = _refused(vad_main, cam_root, "run", "--dataset", "cam")
    assert "several small checkpoints" in err and "small-topheavy.pt, small-vae3d.pt" in err


def test_ingest_refuses_a_folder_with_no_videos_before_prefect_starts(tmp_path, vad_main):
    (tmp_path / "empty").mkdir()
    err = _refused(vad_main, tmp_path / "ws", "ingest", str(tmp_path / "empty"), "--dataset", "x")
    assert "no videos found" in err
    assert not (tmp_path / "ws").exists()


def test_the_reuse_line_says_which_checkpoint_and_why(tmp_path):
    from vad.flows.pipeline import _reused

    folder = tmp_path / "checkpoints" / "cam"
    folder.mkdir(parents=True)
    assert _reused(str(tmp_path), "cam", "small") is None  # nothing there: the run trains one
    (folder / "small-topheavy.pt").write_bytes(b"")
    assert _reused(str(tmp_path), "cam", "small") == (
        f"small model: using {folder / 'small-topheavy.pt'} (the one small-*.pt there; delete it to train again)")
    (folder / "small-motion_patch.pt").write_bytes(b"")
    assert _reused(str(tmp_path), "cam", "small") == (
        f"small model: using {folder / 'small-motion_patch.pt'} (the default architecture's, of 2 small checkpoints there)")


@pytest.mark.integration
def test_run_says_what_each_stage_did_and_scores_with_the_options_given(tiny_dataset, tmp_path, prefect_api_env):
    root = tmp_path / "ws"
    proc = subprocess.run(  # on the session's Prefect API: the temporary server is tests/test_cli_signals.py's
        [str(VAD), "run", "--dataset", "tiny", "--source", str(tiny_dataset), "--gray", "--report", "t", "--root", str(root),
         "--frame-mode", "frame", "--device", "cpu", "--batch", "4", "--precision", "float32", "--size", "32x32"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path, env=prefect_api_env,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    lines = proc.stdout.splitlines()
    assert "ingest tiny: 4 videos; ingested 4, skipped 0 (unchanged), failed 0" in proc.stdout
    assert any(line.startswith("store ") and "4 videos (2 train, 2 test), 160 frames at 48x64 gray, 25 fps" in line
               for line in lines), proc.stdout
    for role, arch in (("small", "motion_patch"), ("large", "objects")):  # the defaults, fitted on 1.6 s videos
        assert f"{role} model: no {role}-*.pt in {root}/checkpoints/tiny/; training {arch}" in proc.stdout
    assert proc.stdout.count("checkpoint: ") == 2  # each training's summary
    assert "score tiny (run t-all)" in proc.stdout and "score tiny (run t-budget-0.2)" in proc.stdout
    assert f"report: {root}/reports/t/report.html" in proc.stdout
    record = json.loads((root / "scores" / "runs" / "dataset=tiny" / "run=t-budget-0.2" / "run.json").read_text())
    assert record["frame_mode"] == "frame"
    assert record["compute"]["requested_device"] == "cpu" and record["compute"]["precision"] == "float32"
    assert record["compute"]["batch"]["small"] == 4


def test_train_refuses_a_missing_distillation_teacher_before_prefect_starts(cam_root, vad_main):
    err = _refused(vad_main, cam_root, "train", "--dataset", "cam", "--arch", "vae3d", "--distill", "/nope/flow.pt")
    assert "distillation teacher /nope/flow.pt does not exist" in err
