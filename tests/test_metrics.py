"""Frame-level metrics with answers worked out by hand."""

import math

import numpy as np
import pandas as pd
import pytest
from vad.tasks.evaluation.metrics import Protocol, binary_metrics, eer, evaluate

from vad.errors import ParameterError


def test_perfectly_separated_scores_give_auc_1_and_eer_0():
    m = binary_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert m == {"auc": 1.0, "eer": 0.0, "ap": 1.0}


def test_reversed_scores_give_auc_0():
    m = binary_metrics(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1]))
    assert m["auc"] == 0.0 and m["eer"] == 1.0


def test_a_small_example_by_hand():
    # positives 0.35 and 0.8, negatives 0.1 and 0.4: 3 of 4 pairs ordered -> AUC 0.75.
    # Ranked: 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-): AP = 0.5 * 1 + 0.5 * 2/3 = 5/6.
    # At threshold 0.4 one of two negatives passes and one of two positives is missed: EER 0.5.
    m = binary_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert m["auc"] == pytest.approx(0.75) and m["ap"] == pytest.approx(5 / 6) and m["eer"] == pytest.approx(0.5)


def test_eer_is_interpolated_between_roc_points():
    # tied scores: the ROC is the diagonal from (0, 0) to (1, 1), crossing FPR = FNR at 0.5
    assert eer(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    # the positive scores between two negatives: FNR drops from 1 to 0 at FPR 1/3
    assert eer(np.array([0, 0, 0, 1]), np.array([0.1, 0.2, 0.3, 0.25])) == pytest.approx(1 / 3)


def _frames():
    # video a: both classes, perfectly ranked; b: only normal frames; c: both, reversed; one unknown
    return pd.DataFrame({
        "video": ["a"] * 4 + ["b"] * 3 + ["c"] * 3,
        "frame": [0, 1, 2, 3, 0, 1, 2, 0, 1, 2],
        "label": pd.array([0, 0, 1, 1, 0, 0, 0, 1, 0, None], dtype="Int8"),
        "score": [0.1, 0.2, 0.8, 0.9, 0.3, 0.3, 0.3, 0.05, 0.6, 0.99],
    })


def test_views_micro_macro_and_an_undefined_one_class_video():
    summary, per_video = evaluate(_frames())
    assert per_video.video.tolist() == ["a", "b", "c"]  # b is listed, not dropped
    b = per_video.set_index("video").loc["b"]
    assert not b.defined and math.isnan(b.auc) and b.frames == 3
    assert per_video.set_index("video").auc[["a", "c"]].tolist() == [1.0, 0.0]
    assert summary["macro_auc"] == 0.5 and summary["videos"] == 3 and summary["videos_defined"] == 2
    assert summary["frames"] == 9 and summary["unlabelled_frames"] == 1 and summary["protocol"] == "standard"
    # micro pools the 9 labelled frames: positives 0.8, 0.9, 0.05 against negatives 0.1, 0.2, 0.3 x3, 0.6
    assert summary["micro_auc"] == pytest.approx((6 + 6 + 0) / 18)


def test_non_standard_protocols_are_labelled_and_change_the_scores():
    frames = _frames()
    summary, _ = evaluate(frames, protocol=Protocol(minmax=True))
    assert summary["protocol"] == "NON-STANDARD: per-video min-max normalisation"
    smoothed, _ = evaluate(frames, protocol=Protocol(smooth_sigma=2))
    assert "temporal Gaussian smoothing (sigma 2 frames)" in smoothed["protocol"]
    assert smoothed["micro_auc"] != evaluate(frames)[0]["micro_auc"]
    with pytest.raises(ParameterError):
        Protocol(smooth_sigma=-1)
    with pytest.raises(ParameterError, match="label"):
        evaluate(frames.drop(columns="label"))


@pytest.mark.parametrize(("labels", "expected"), [
    ([[-1] * 8, [-1] * 8], False),  # a camera's footage: nothing labelled
    ([[0] * 8, [-1] * 8], False),  # labelled, but one class only: no AUC to rank budgets by
    ([[0] * 8, [-1] * 4 + [1] * 4], True),  # both classes, across videos
])
def test_store_has_labels_needs_both_classes_in_the_test_split(tmp_path, labels, expected) -> None:
    from vad.storage import ClipStore
    from vad.tasks.evaluation.metrics import store_has_labels

    store = ClipStore.create(str(tmp_path / "s.zarr"), dataset="s")
    for i, video_labels in enumerate(labels + [[1] * 8]):  # the last video is a training one: never counted
        split = "train" if i == len(labels) else "test"
        writer = store.begin_video(f"v{i}", height=4, width=4, channels=1, chunk_frames=4, attrs={"split": split})
        writer.append(np.zeros((8, 4, 4, 1), np.uint8), np.zeros(8, bool))
        writer.finish(np.array(video_labels, np.int8), {"split": split})
    assert store_has_labels(str(tmp_path / "s.zarr")) is expected
