"""Choices made on a camera's own normal footage: the bootstrap by hand, the variant validation favours,
the record in the checkpoint, `--variant`, the fall-back when the footage is too little, `vad validate`."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from vad.models.motion_patch import MotionPatch
from vad.tasks.evaluation import choices
from vad.tasks.learning import selection
from vad.tasks.inference.routing import FUSIONS, ROUTERS, router_from_record
from vad.tasks.learning.selection import VariantResult, best, best_paired, bootstrap_auc, evaluate_variants, rank_auc
from vad.tasks.learning.training import TrainConfig, train_model
from vad.tasks.runtime.checkpoint import load_checkpoint

from vad.errors import ParameterError

TWO = {"default": {}, "minus_q": {"statistic": "minus_q"}}


def test_bootstrap_and_the_pick_by_hand():
    labels = [np.array([0, 0, 1, 1]), np.array([0, 1, -1])]  # -1: unknown, left out
    scores = [np.array([0.1, 0.2, 0.8, 0.9]), np.array([0.3, 0.7, 0.0])]
    assert bootstrap_auc(labels, scores) == (1.0, 1.0, 1.0)  # separable in every resample
    mixed = [np.array([0, 1]), np.array([0, 1]), np.array([1, 0])]
    values = [np.array([0.0, 1.0])] * 3
    point, low, high = bootstrap_auc(mixed, values, seed=3)
    # positives score 1, 1, 0 and negatives 0, 0, 1: 4 of 9 pairs won, 2 + 2 tied (half each) -> 6/9
    assert point == pytest.approx(2 / 3) and low <= point <= high and (low, high) == bootstrap_auc(mixed, values, seed=3)[1:]
    assert np.isnan(bootstrap_auc([np.zeros(3)], [np.ones(3)])[0])  # one class: no AUC
    rows = [VariantResult("a", {}, 0.8, 0.7, 0.9), VariantResult("b", {}, 0.8, 0.6, 0.95), VariantResult("c", {}, float("nan"), 0, 0)]
    assert best(rows).name == "a"  # an exact tie keeps the default
    # a better point whose interval reaches below the default's AUC does not replace the default
    assert best([VariantResult("a", {}, 0.7, 0.5, 0.8), VariantResult("b", {}, 0.75, 0.69, 0.9)]).name == "a"
    # a variant wholly above it does; of two such, the higher AUC
    sure = [VariantResult("a", {}, 0.7, 0.5, 0.8), VariantResult("b", {}, 0.8, 0.71, 0.9), VariantResult("c", {}, 0.85, 0.72, 0.9)]
    assert best(sure).name == "c"
    assert best([VariantResult("a", {}, float("nan"), 0, 0), VariantResult("b", {}, 0.6, 0.5, 0.7)]).name == "b"


def test_evaluate_variants_favours_the_variant_that_is_not_crippled(synthetic_store, tmp_path):
    # the base config lags 15 frames (a difference across the whole clip); the variant puts it back to 1
    base = TrainConfig(role="small", arch="motion_patch", model={"lag": 15}, workers=0)
    lines: list[str] = []
    results = evaluate_variants(synthetic_store, "motion_patch", "small", {"default": {}, "lag1": {"lag": 1}}, base,
                                out_dir=tmp_path, log=lines.append, split_name="test")
    assert [r.name for r in results] == ["default", "lag1"]
    assert results[1].auc > results[0].auc + 0.1 and best(results).name == "lag1"
    assert all(r.low <= r.auc <= r.high for r in results)
    assert load_checkpoint(results[1].checkpoint).model_config["lag"] == 1
    # one line per variant, its figure named after the split it was measured on
    assert [line.split(":")[0].strip() for line in lines] == ["variant motion_patch/default", "variant motion_patch/lag1"]
    assert all(f"test micro AUC {r.auc:.3f}" in line for r, line in zip(results, lines, strict=True))


@pytest.fixture
def workspace(synthetic_store, tmp_path, monkeypatch):
    """A workspace whose store 'cam' is the synthetic store (6 normal videos), motion_patch with two variants."""
    (tmp_path / "stores").mkdir()
    (tmp_path / "stores" / "cam.zarr").symlink_to(synthetic_store)
    monkeypatch.setattr(MotionPatch, "VARIANTS", TWO)
    return str(tmp_path)


def test_training_chooses_on_validation_records_it_and_validate_prints_it(workspace, monkeypatch, vad_main):
    root = workspace
    read = []
    original = selection.first_pass
    monkeypatch.setattr(selection, "first_pass", lambda url, *a, **k: read.append(url) or original(url, *a, **k))
    config, record = choices.choose_for_training(root, "cam", TrainConfig(role="small", workers=0))
    val = record["validation"]
    assert set(read) == {val["store"]} and "validation" in val["store"]  # only the validation store is scored
    rows = [VariantResult(r["name"], {}, r["auc"], r["low"], r["high"]) for r in record["variants"]]
    assert [r.name for r in rows] == list(TWO) and record["chosen"] == best(rows).name
    assert config.variant == record["chosen"] and config.model == TWO[record["chosen"]]
    out = Path(root) / "checkpoints" / "cam" / "small-motion_patch.pt"
    train_model(f"{root}/stores/cam.zarr", out, config, selection=record)
    ck = load_checkpoint(out)
    assert json.dumps(ck.selection, sort_keys=True) == json.dumps(record, sort_keys=True)
    assert ck.training["config"]["variant"] == record["chosen"] and ck.chosen_fusion == "replace"

    # the validation set is reused while the footage is unchanged
    monkeypatch.setattr(choices, "make_validation_set", lambda *a, **k: pytest.fail("the validation set was made again"))
    assert choices.validation_store(root, "cam")[0] == val["id"]

    # the large model (motion_patch standing in for the default, one variant forced): the fusion is chosen
    monkeypatch.setattr(selection, "DEFAULT_ARCH", {"small": "motion_patch", "large": "motion_patch"})
    large_cfg, large_record = choices.choose_for_training(root, "cam", TrainConfig(role="large", arch="motion_patch",
                                                                                   variant="default", workers=0))
    fusion = large_record["fusion"]
    # every declared router with every fusion rule, the plain pair first, and the pick the paired gains favour
    assert [(r["router"], r["fusion"]) for r in fusion["candidates"]] == [(r, f) for r in ROUTERS for f in FUSIONS]
    assert fusion["budget"] == 0.2 and fusion["candidates"][0]["gain"] == 0
    # a pair must be surely better at every budget of 0.1, 0.2 and 0.3: its lowest gain bound decides
    assert fusion["budgets"] == [0.1, 0.2, 0.3] and all(set(r["gain_low_by_budget"]) == {"0.1", "0.2", "0.3"}
                                                         for r in fusion["candidates"])
    picked = fusion["candidates"][best_paired([{**r, "gain_low": min(r["gain_low_by_budget"].values())}
                                               for r in fusion["candidates"]])]
    assert (fusion["router"], fusion["chosen"]) == (picked["router"], picked["fusion"])
    assert router_from_record(fusion["router_settings"]) == router_from_record(ROUTERS[fusion["router"]])
    assert large_record["reason"] == "forced by --variant" and [r["name"] for r in large_record["variants"]] == ["default"]
    train_model(f"{root}/stores/cam.zarr", Path(root) / "checkpoints" / "cam" / "large-motion_patch.pt", large_cfg,
                selection=large_record)

    code, text, err = vad_main("validate", "--dataset", "cam", "--root", root)
    assert code == 0, err
    assert f"* variant {record['chosen']}" in text and "minus_q" in text and "default" in text
    assert f"* routing {fusion['router']} / {fusion['chosen']}" in text and val["id"] in text
    assert router_from_record(load_checkpoint(Path(root) / "checkpoints" / "cam" / "large-motion_patch.pt").chosen_router) == \
        router_from_record(ROUTERS[fusion["router"]])
    code, text, err = vad_main("validate", "--dataset", "nothing", "--root", root)
    assert code == 1 and "no checkpoint for dataset 'nothing'" in text + err and "Traceback" not in text + err


def test_variant_forces_and_too_little_footage_keeps_the_first(workspace, tiny_dataset, tmp_path, vad_main):
    with pytest.raises(ParameterError, match="motion_patch has no variant 'nope'; its variants: default, minus_q"):
        TrainConfig(role="small", variant="nope")
    code, out, err = vad_main("train", "--dataset", "cam", "--root", workspace, "--variant", "nope")
    assert code != 0 and "has no variant 'nope'" in out + err and "Traceback" not in out + err
    config, record = choices.choose_for_training(workspace, "cam", TrainConfig(role="small", variant="minus_q"))
    assert config.model == {"statistic": "minus_q"} and record["validation"] is None  # nothing to choose: no fit
    assert record["reason"] == "forced by --variant"
    # settings given by hand are kept as given, with no record
    assert choices.choose_for_training(workspace, "cam", TrainConfig(role="small", model={"lag": 2}))[1] is None
    both, why = choices.choose_for_training(workspace, "cam", TrainConfig(role="small", variant="minus_q", model={"lag": 2}))
    assert both.model == {"statistic": "minus_q", "lag": 2} and why["reason"] == "forced by --variant"

    from vad.tasks.sources.datasets import discover
    from vad.tasks.sources.ingest import Preprocess, ingest_video

    root = tmp_path / "tiny-ws"
    for source in discover(str(tiny_dataset), "folder"):  # 2 normal videos: too few to hold any out
        ingest_video(str(root / "stores" / "tiny.zarr"), source, Preprocess(gray=True), dataset="tiny")
    config, record = choices.choose_for_training(str(root), "tiny", TrainConfig(role="small"))
    assert config.variant == "default" and config.model == {} and record["variants"] == []
    assert record["reason"].startswith("validation failed: ")
    assert replace(config, variant=None) == TrainConfig(role="small")


def test_the_rank_auc_counts_pairs_and_ties_by_hand():
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of the 4 pairs ordered right
    assert rank_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    # a tie counts half: the positive at 0.4 ties one negative and beats the other
    assert rank_auc(np.array([0, 0, 1]), np.array([0.1, 0.4, 0.4])) == 0.75
    assert rank_auc(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5
    for bad in ((np.array([1, 1]), np.array([0.1, 0.2])), (np.array([0, 1]), np.array([0.1, np.nan])),
                (np.array([0, 1, 0]), np.array([0.1, 0.2]))):
        with pytest.raises(ValueError):
            rank_auc(*bad)


def test_the_rank_auc_is_scikit_learns_on_scores_with_many_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    for n in (2, 7, 500):
        y = np.r_[0, 1, rng.integers(0, 2, n - 2)]
        s = np.round(rng.normal(size=n) + y, 1)  # rounded: runs of equal scores across both classes
        assert abs(rank_auc(y, s) - roc_auc_score(y, s)) < 1e-12
