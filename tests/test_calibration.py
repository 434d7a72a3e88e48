"""Calibration with numbers worked out by hand."""

import numpy as np
import pytest
import torch
from vad.tasks.runtime.calibration import (
    Calibration,
    EmpiricalRank,
    cosine_distances,
    window_variances,
)

from vad.errors import ParameterError

# 19 normal scores 10, 20, ..., 190 rank at 1/20, 2/20, ..., 19/20.
SCORES = np.arange(10, 200, 10)[::-1]


def test_percentile_ranks_of_a_known_score_list():
    r = EmpiricalRank.fit(SCORES)
    assert r.rank([100, 10, 190]) == pytest.approx([0.5, 0.05, 0.95])
    assert r.rank(15) == pytest.approx(0.075)  # halfway between 10 (0.05) and 20 (0.10)
    assert r.quantile(0.95) == 190 and r.quantile(0.5) == 100


def test_ranks_beyond_the_normal_range_stay_ordered_and_inside_0_1():
    r = EmpiricalRank.fit(SCORES)
    above = r.rank([191, 200, 500, 10_000])
    below = r.rank([9, 0, -100])
    assert (np.diff(above) > 0).all() and above[0] > 0.95 and above[-1] <= 1.0
    assert (np.diff(below) < 0).all() and below[0] < 0.05 and below[-1] >= 0.0


def test_far_anomalies_keep_distinct_ranks_and_the_threshold_inverts_the_rank():
    rng = np.random.default_rng(0)
    r = EmpiricalRank.fit(rng.normal(0.01, 0.002, 55))
    far = r.rank([0.08, 0.09, 0.1, 0.2, 10.0])
    assert (np.diff(far) > 0).all() and far[-1] < 1.0
    # few clips (5, largest rank 5/6) or ties: the threshold is still the value of rank q
    for sample in ([1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 1.0, 1.0, 2.0]):
        e = EmpiricalRank.fit(sample)
        for q in (0.3, 0.5, 0.95):
            assert e.rank(e.quantile(q)) == pytest.approx(q)


def test_tied_scores_share_the_middle_rank():
    assert EmpiricalRank.fit([1, 2, 2, 3]).rank([1, 2, 3]) == pytest.approx([0.2, 0.5, 0.8])


def test_window_variances_and_cosine_distances_by_hand():
    # windows [0, 1], [1, 0], [0, 1]: each has mean 0.5 and variance 0.25
    assert window_variances(np.array([0.0, 1.0, 0.0, 1.0]), 2) == pytest.approx([0.25, 0.25, 0.25])
    assert window_variances(np.array([0.3]), 2).size == 0
    d = cosine_distances(np.array([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]), np.array([1.0, 0.0]))
    assert d == pytest.approx([0.0, 1.0, 2.0])


def test_fit_threshold_centroid_and_instability_windows_stay_within_each_video():
    scores = list(SCORES)
    emb = np.tile([[1.0, 0.0], [0.0, 1.0]], (10, 1))[:19]
    vids = ["a"] * 10 + ["b"] * 9
    cal = Calibration.fit(scores=scores, embeddings=emb, video_ids=vids, quantile=0.95, window=4)
    assert cal.threshold == 190
    assert cal.calibrate([100, 190]) == pytest.approx([0.5, 0.95])
    assert cal.centroid == pytest.approx([10 / 19, 9 / 19])
    # 10 - 4 + 1 windows in video a, 9 - 4 + 1 in b; none spans the two videos
    assert cal.instability.n == 7 + 6
    # scores fall by 10 each clip, so every window's ranks are 4 steps of 0.05: variance 0.05^2 * 1.25
    assert cal.instability.sorted_values == pytest.approx([0.05**2 * 1.25] * 13)


def test_state_round_trips_through_a_weights_only_load(tmp_path):
    cal = Calibration.fit(scores=SCORES, embeddings=np.eye(19, 3), video_ids=["v"] * 19)
    torch.save(cal.to_state(), tmp_path / "c.pt")
    back = Calibration.from_state(torch.load(tmp_path / "c.pt", weights_only=True))
    assert back.threshold == cal.threshold and back.window == 4
    assert back.calibrate([55, 200]) == pytest.approx(cal.calibrate([55, 200]))
    assert back.ood.sorted_values == pytest.approx(cal.ood.sorted_values)


def test_bad_calibration_input_is_refused():
    with pytest.raises(ParameterError, match="quantile"):
        Calibration.fit(scores=SCORES, embeddings=np.eye(19), video_ids=["v"] * 19, quantile=1.0)
    with pytest.raises(ParameterError, match="NaN"):
        EmpiricalRank.fit([1.0, float("nan")])
    with pytest.raises(ParameterError, match="at least one"):
        EmpiricalRank.fit([])
    with pytest.raises(ParameterError, match="must agree"):
        Calibration.fit(scores=SCORES, embeddings=np.eye(5), video_ids=["v"] * 19)
    with pytest.raises(ParameterError, match="no held-out video has 4 clips"):
        Calibration.fit(scores=[1.0, 2.0, 3.0], embeddings=np.eye(3), video_ids=["a", "b", "c"])
