"""Router signals and budgets, with answers worked out by hand."""

import numpy as np
import pytest
from vad.tasks.inference.routing import (
    BatchBudget,
    RouterConfig,
    Signals,
    TokenBucket,
    compute_signals,
    parse_budget,
    route,
    trailing_variance,
)
from vad.tasks.runtime.calibration import Calibration

from vad.errors import ParameterError

# 19 normal clip scores 10..190 (ranks 0.05..0.95), embeddings on two axes, one video of 19 clips
CAL = Calibration.fit(
    scores=np.arange(10, 200, 10), embeddings=np.tile([[1.0, 0.0], [0.9, 0.1]], (10, 1))[:19],
    video_ids=["n"] * 19, quantile=0.95, window=4,
)


def _signals(calibrated, distance=None, videos=None, cuts=None, config=RouterConfig()):
    n = len(calibrated)
    return compute_signals(
        calibrated=np.asarray(calibrated, float), embeddings_distance=np.zeros(n) if distance is None else distance,
        video_ids=np.array(videos or ["v"] * n), scene_cut=np.zeros(n, bool) if cuts is None else cuts,
        calibration=CAL, config=config,
    )


def _all_fire(n):
    return Signals(np.zeros(n), np.zeros(n), np.zeros(n), {"gray_zone": np.ones(n, bool)})


def test_bucket_of_capacity_3_and_no_refill_escalates_exactly_3():
    r = route(_all_fire(10), np.array(["v"] * 10), TokenBucket(3, 0))
    assert r.escalated.tolist() == [True] * 3 + [False] * 7
    assert r.held.sum() == 7


def test_bucket_refills_per_clip_and_per_video():
    # capacity 1, refill 0.5 per clip: tokens 1 -> take (0) -> 0.5 -> 1.0 take -> ... every other clip
    r = route(_all_fire(6), np.array(["v"] * 6), TokenBucket(1, 0.5))
    assert r.escalated.tolist() == [True, False, True, False, True, False]
    # each video starts with a full bucket
    r = route(_all_fire(4), np.array(["a", "a", "b", "b"]), TokenBucket(1, 0))
    assert r.escalated.tolist() == [True, False, True, False]


def test_empty_bucket_suppresses_and_quiet_clips_keep_their_tokens():
    s = _all_fire(4)
    s.flags["gray_zone"][:] = [False, True, True, True]
    r = route(s, np.array(["v"] * 4), TokenBucket(2, 0))
    assert r.escalated.tolist() == [False, True, True, False] and r.held.tolist() == [False, False, False, True]
    assert route(s, np.array(["v"] * 4), TokenBucket(0, 0)).escalated.sum() == 0


def test_batch_budget_0_escalates_none_and_1_escalates_all():
    s = _signals([0.1, 0.5, 0.94, 0.99])
    assert route(s, np.array(["v"] * 4), BatchBudget(0.0)).escalated.sum() == 0
    assert route(s, np.array(["v"] * 4), BatchBudget(1.0)).escalated.all()


def test_batch_budget_takes_the_hardest_clips():
    # 0.94 and 0.96 are in the gray zone (within 0.05 of 0.95): difficulty 1 + 0.99; 0.5 has 0.55; 0.1 has 0.15
    s = _signals([0.1, 0.5, 0.94, 0.96])
    assert route(s, np.array(["v"] * 4), BatchBudget(0.5)).escalated.tolist() == [False, False, True, True]
    assert route(s, np.array(["v"] * 4), BatchBudget(0.75)).escalated.tolist() == [False, True, True, True]


def test_gray_zone_fires_near_the_threshold_only():
    s = _signals([0.93, 0.97, 0.5, 1.0])
    assert s.flags["gray_zone"].tolist() == [True, True, False, False]


def test_ood_fires_above_the_calibrated_distance_level():
    level = CAL.ood.quantile(0.99)
    s = _signals([0.5, 0.5], distance=np.array([level * 2 + 0.01, level / 2]))
    assert s.flags["ood"].tolist() == [True, False]


def test_instability_uses_the_last_window_of_the_same_video():
    # window 4: steady scores never fire; alternating 0 / 1 (variance 0.25) does once 4 clips are in
    steady = _signals([0.5] * 6)
    assert not steady.flags["unstable"].any()
    jumpy = _signals([0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    assert jumpy.flags["unstable"].tolist() == [False, False, False, True, True, True]
    assert trailing_variance(np.array([0.0, 1.0, 0.0, 1.0]), np.array(["a", "a", "b", "b"]), 2).tolist()[1] == 0.25
    # windows never span videos: two clips of 'b' do not fill a window of 4
    mixed = _signals([0.0, 1.0, 0.0, 1.0, 0.0, 1.0], videos=["a"] * 4 + ["b"] * 2)
    assert mixed.flags["unstable"].tolist() == [False, False, False, True, False, False]


def test_scene_cut_fires_on_flagged_clips_and_reasons_name_the_signals():
    s = _signals([0.5, 0.96], cuts=np.array([True, False]))
    assert s.flags["scene_cut"].tolist() == [True, False]
    r = route(s, np.array(["v", "v"]), TokenBucket(5, 0))
    assert r.reasons == ["scene_cut", "gray_zone"] and r.escalated.all()


def test_disabled_signals_never_fire_and_bad_settings_are_refused():
    s = _signals([0.96], cuts=np.array([True]), config=RouterConfig(signals=("ood",)))
    assert list(s.flags) == ["ood"] and not s.fired.any()
    with pytest.raises(ParameterError, match="not both"):
        parse_budget(0.2, "3,0")
    with pytest.raises(ParameterError, match="CAPACITY,REFILL"):
        parse_budget(None, "3")
    with pytest.raises(ParameterError, match=r"\[0, 1\]"):
        parse_budget(1.5)
    with pytest.raises(ParameterError, match="unknown signal"):
        RouterConfig(signals=("loud",))
    assert parse_budget() == BatchBudget(0.2) and parse_budget(bucket="3,0.5") == TokenBucket(3, 0.5)
