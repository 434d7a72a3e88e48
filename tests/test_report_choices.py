"""The report's "Choices on validation" section: shown with the checkpoints' recorded choices, absent without."""

import shutil
from dataclasses import replace

import pytest

from conftest import make_checkpoint
from vad.tasks.evaluation.report import RunRef, build_report
from vad.tasks.inference.routing import BatchBudget
from vad.tasks.inference.scoring import score_dataset
from vad.tasks.runtime.checkpoint import save_checkpoint

RECORD = {
    "chosen": "minus_q",
    "reason": "validation",
    "validation": {"id": "abc123"},
    "variants": [
        {"name": "default", "auc": 0.70, "low": 0.61, "high": 0.78, "overrides": {}},
        {"name": "minus_q", "auc": 0.91, "low": 0.85, "high": 0.96, "overrides": {"statistic": "minus_q"}},
    ],
}
FUSION = {"chosen": "replace", "budget": 0.2, "rules": [
    {"name": "replace", "auc": 0.80, "low": 0.70, "high": 0.88},
    {"name": "mean", "auc": 0.83, "low": 0.72, "high": 0.90},
]}


@pytest.fixture(scope="module")
def workspace(synthetic_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("choices-ws")
    shutil.copytree(synthetic_store, root / "stores" / "synthetic.zarr")
    folder = root / "checkpoints" / "synthetic"
    small = make_checkpoint(synthetic_store, "topheavy", 0, folder)
    large = make_checkpoint(synthetic_store, "ae3d", 1, folder, role="large")
    score_dataset(str(root), "synthetic", budget=BatchBudget(0.2), run_id="plain")
    plain = (build_report(root, [RunRef("synthetic", "plain")], name="plain") / "report.md").read_text()
    save_checkpoint(replace(small, training={"selection": RECORD}), small.path)
    save_checkpoint(replace(large, training={"selection": {**RECORD, "chosen": "default", "fusion": FUSION}}), large.path)
    score_dataset(str(root), "synthetic", budget=BatchBudget(0.2), run_id="chosen")
    return root, plain


def _section(md: str) -> list[str]:
    start = md.index("### Choices on validation")
    return md[start:md.index("### Timelines", start)].splitlines()


def test_the_report_shows_every_recorded_variant_and_fusion_with_the_choice_marked(workspace):
    md = (build_report(workspace[0], [RunRef("synthetic", "chosen")], name="chosen") / "report.md").read_text()
    rows = [line for line in _section(md) if line.startswith("| ") and "micro_auc" not in line and "---" not in line]
    # two variants for each model and two fusion rules for the large one: 6 rows, 3 marked
    assert len(rows) == 6
    marked = sorted(" ".join(c.strip() for c in r.strip("|").split("|")[:3]) for r in rows if r.rstrip(" |").endswith("*"))
    # a record from before routers were chosen: its fusion rules with the default router
    assert marked == ["large (ae3d) router / fusion @ 0.2 default / replace", "large (ae3d) variant default",
                      "small (topheavy) variant minus_q"]
    assert any("0.910" in r and "0.850" in r and "0.960" in r for r in rows)  # the figures as recorded


def test_a_run_whose_checkpoints_recorded_no_choice_has_no_such_section(workspace):
    assert "### Timelines" in workspace[1] and "Choices on validation" not in workspace[1]
