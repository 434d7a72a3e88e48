"""The report says which package versions produced its figures: those each run recorded in its
run.json, and those the report's own metrics were computed with."""

import json
import platform
import shutil
from importlib import metadata

import pytest

from conftest import make_checkpoint
from vad.storage import read_manifest, run_dir
from vad.tasks.evaluation.report import RunRef, build_report
from vad.tasks.inference.routing import BatchBudget
from vad.tasks.inference.scoring import score_dataset


def test_the_report_has_an_environment_section_with_the_runs_versions(synthetic_store, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(synthetic_store, root / "stores" / "synthetic.zarr")
    make_checkpoint(synthetic_store, "topheavy", 0, root / "checkpoints" / "synthetic")
    make_checkpoint(synthetic_store, "ae3d", 1, root / "checkpoints" / "synthetic", role="large")
    score_dataset(str(root), "synthetic", budget=BatchBudget(0.2), run_id="a")
    score_dataset(str(root), "synthetic", budget=BatchBudget(0.2), run_id="b")
    # run b as if scored elsewhere, with another torch
    manifest = run_dir(root, "runs", "synthetic", "b") / "run.json"
    record = json.loads(manifest.read_text())
    record["versions"]["torch"] = "9.9.9"
    manifest.write_text(json.dumps(record))
    recorded = read_manifest(root, "synthetic", "a")["versions"]
    assert recorded["torch"] == metadata.version("torch")

    out = build_report(root, [RunRef("synthetic", "a"), RunRef("synthetic", "b")], name="rep")
    md = (out / "report.md").read_text()
    assert "## Environment" in md
    section = md[md.index("## Environment"):]
    assert f"torch {recorded['torch']}" in section and "torch 9.9.9" in section  # each run's own set
    assert "run a" in section and "run b" in section
    assert f"Python {platform.python_version()}" in section
    for name in ("numpy", "pandas", "scikit-learn"):
        assert f"{name} {metadata.version(name)}" in section  # what computed the metrics
    assert "constraints.txt" in section
    html = (out / "report.html").read_text()
    assert "<h2>Environment</h2>" in html and "torch 9.9.9" in html


def test_a_rebuild_that_fails_while_put_in_place_leaves_the_previous_report(synthetic_store, tmp_path, monkeypatch):
    from pathlib import Path

    root = tmp_path / "ws"
    shutil.copytree(synthetic_store, root / "stores" / "synthetic.zarr")
    make_checkpoint(synthetic_store, "topheavy", 0, root / "checkpoints" / "synthetic")
    make_checkpoint(synthetic_store, "ae3d", 1, root / "checkpoints" / "synthetic", role="large")
    score_dataset(str(root), "synthetic", budget=BatchBudget(0.2), run_id="a")
    out = build_report(root, [RunRef("synthetic", "a")], name="rep")
    before = sorted(p.name for p in out.iterdir())
    md = (out / "report.md").read_text()

    rename = Path.rename

    def failing(self, target):  # the newly built folder cannot be moved into place
        if Path(target) == out and self.name.startswith(".rep.") and self.name != ".rep.old":
            raise OSError(28, "No space left on device")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(OSError, match="No space"):
        build_report(root, [RunRef("synthetic", "a")], name="rep")
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == before and (out / "report.md").read_text() == md
    assert [p.name for p in out.parent.iterdir()] == ["rep"]  # no temporary folder or lock left
