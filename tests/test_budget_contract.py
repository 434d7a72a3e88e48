"""The contract every budget policy passes: the budget caps escalations, only what the policy may
take is taken, held clips are exactly the fired ones it said no to, and the same input routes the
same way. New policies join `POLICIES`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from vad.tasks.inference.routing import (
    BatchBudget,
    Signals,
    TokenBucket,
    budget_record,
    route,
)

POLICIES = [BatchBudget(0.0), BatchBudget(0.25), BatchBudget(1.0), TokenBucket(0, 0), TokenBucket(2, 0),
            TokenBucket(1, 0.5), TokenBucket(3, 0.25)]
VIDEOS = np.array(["a"] * 12 + ["b"] * 8)  # 20 clips in stream order


def _signals(seed: int) -> Signals:
    rng = np.random.default_rng(seed)
    n = len(VIDEOS)
    gray = rng.uniform(0, 0.5, n)
    flags = {"gray_zone": gray < 0.1, "ood": rng.uniform(size=n) < 0.3, "unstable": np.zeros(n, bool),
             "scene_cut": rng.uniform(size=n) < 0.1}
    return Signals(gray, rng.uniform(size=n), np.full(n, np.nan), flags)


def _cap(policy, video_clips: int) -> int:
    """The most clips a policy may escalate in one video of `video_clips` clips."""
    if isinstance(policy, TokenBucket):
        return min(video_clips, math.floor(policy.capacity + policy.refill * (video_clips - 1) + 1e-9))
    return video_clips


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.describe())
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_budget_contract(policy, seed):
    signals = _signals(seed)
    r = route(signals, VIDEOS, policy)
    n = len(VIDEOS)
    assert r.escalated.dtype == bool and r.escalated.shape == (n,)
    # held: a signal fired and the budget said no; never an escalated clip
    assert np.array_equal(r.held, signals.fired & ~r.escalated)
    # the budget caps escalations, per video and overall
    for vid in ("a", "b"):
        assert r.escalated[VIDEOS == vid].sum() <= _cap(policy, int((VIDEOS == vid).sum()))
    if isinstance(policy, BatchBudget):
        assert r.escalated.sum() == round(policy.fraction * n)
        # the hardest clips go first: nothing left behind is harder than what was taken
        if 0 < r.escalated.sum() < n:
            assert r.difficulty[~r.escalated].max() <= r.difficulty[r.escalated].min()
    else:
        assert not (r.escalated & ~signals.fired).any()  # a token bucket spends only on fired clips
    # a reason is recorded exactly where a signal fired
    assert [bool(x) for x in r.reasons] == signals.fired.tolist()
    again = route(signals, VIDEOS, policy)
    assert np.array_equal(again.escalated, r.escalated) and again.reasons == r.reasons
    assert budget_record(policy)["policy"] in ("batch", "token-bucket")


@pytest.mark.parametrize("policy", [BatchBudget(0.0), TokenBucket(0, 0)], ids=lambda p: p.describe())
def test_a_zero_budget_escalates_nothing(policy):
    r = route(_signals(0), VIDEOS, policy)
    assert not r.escalated.any() and r.held.sum() == _signals(0).fired.sum()


def test_a_token_bucket_of_three_without_refill_takes_the_first_three_fired_clips_of_each_video():
    signals = _signals(0)
    signals.flags = {"gray_zone": np.ones(len(VIDEOS), bool)}  # every clip fires
    r = route(signals, VIDEOS, TokenBucket(3, 0))
    assert np.flatnonzero(r.escalated).tolist() == [0, 1, 2, 12, 13, 14]
