"""The router chosen on validation: the odds band by hand, the paired bootstrap and the pick by hand,
the large checkpoint's choice reaching a run unless router settings are given, and the CLI's options."""

from dataclasses import replace

import numpy as np
import pytest

from conftest import make_checkpoint
from vad.tasks.inference.routing import ROUTERS, RouterConfig, gray_distance, router_config, router_from_record
from vad.tasks.inference.scoring import resolve_router, score_videos
from vad.tasks.inference.routing import BatchBudget
from vad.tasks.learning.selection import best_paired, paired_bootstrap

from vad.errors import ParameterError


def test_the_odds_band_measures_factors_of_rarity_against_the_threshold():
    # q = 0.95: the threshold's exceedance is 0.05 and the scale's unit is log(20)
    c = np.array([0.95, 0.90, 0.975, 0.0, 0.9975, 0.5])
    d = gray_distance(c, 0.95, "odds")
    unit = np.log(20)
    assert d[0] == pytest.approx(0.0)
    assert d[1] == pytest.approx(np.log(2) / unit) and d[2] == pytest.approx(np.log(2) / unit)  # twice as common / rare
    assert d[3] == pytest.approx(1.0) and d[4] == pytest.approx(1.0)  # 20 times either way
    assert d[5] == pytest.approx(np.log(10) / unit)  # exceedance 0.5: 10 times as common
    assert np.isfinite(gray_distance(np.array([1.0]), 0.95, "odds")).all()
    # the rank band is the plain percentile distance: everything within 0.05 above the threshold is near
    assert gray_distance(c, 0.95, "rank") == pytest.approx(np.abs(c - 0.95))
    # margin 0.25 on the odds band: a factor 20 ** 0.25 = 2.11 either way (0.894 to 0.976) is in the zone,
    # the surest clip (0.9975) is not
    assert (d < ROUTERS["odds"]["margin"]).tolist() == [True, True, True, False, False, False]
    with pytest.raises(ParameterError, match="band must be one of rank, odds"):
        RouterConfig(band="log")  # type: ignore[arg-type]


def test_router_settings_round_trip_and_unknown_ones_are_refused():
    for settings in ROUTERS.values():
        router = router_from_record(settings)
        assert router_from_record(router.record()) == router
    assert list(ROUTERS)[0] == "default" and router_from_record(ROUTERS["default"]) == RouterConfig()
    assert router_config(band="odds", margin=0.2) == RouterConfig(margin=0.2, band="odds")
    with pytest.raises(ParameterError, match="unknown router setting"):
        router_from_record({"marginn": 0.1})


def test_paired_gains_by_hand_and_the_pick():
    labels = [np.array([0, 0, 1, 1]), np.array([0, 1]), np.array([0, 1])]
    plain = [np.array([0.1, 0.6, 0.5, 0.9]), np.array([0.2, 0.8]), np.array([0.3, 0.7])]
    # the same scores: a gain of exactly 0 in every draw
    same = paired_bootstrap(labels, [plain, plain], seed=1)
    assert same[1]["gain"] == 0 and same[1]["gain_low"] == 0 and same[1]["gain_high"] == 0
    # mending the one misordered pair of video 1 (0.6 above 0.5): every draw that holds it gains, none loses
    mended = [np.array([0.1, 0.4, 0.5, 0.9]), plain[1], plain[2]]
    rows = paired_bootstrap(labels, [plain, mended], seed=1)
    # pooled: 4 negatives (0.1, 0.6, 0.2, 0.3) and 4 positives (0.5, 0.9, 0.8, 0.7): 15 of 16 pairs before, 16 after
    assert rows[0]["auc"] == pytest.approx(15 / 16) and rows[1]["auc"] == pytest.approx(1.0)
    assert rows[1]["gain"] == pytest.approx(1 / 16) and rows[1]["gain_low"] >= 0 and rows[1]["gain_high"] > 0
    assert best_paired([{"gain_low": 0.0, "auc": 0.9}, {"gain_low": 0.0, "auc": 0.99}]) == 0  # 0 is not surely above
    picked = [{"gain_low": 0, "auc": 0.8}, {"gain_low": 0.01, "auc": 0.85}, {"gain_low": -0.1, "auc": 0.95},
              {"gain_low": 0.02, "auc": 0.9}, {"gain_low": float("nan"), "auc": 0.99}]
    assert best_paired(picked) == 3  # surely above the default, and the higher of the two that are
    assert np.isnan(paired_bootstrap([np.zeros(3)], [[np.ones(3)]])[0]["auc"])  # one class: no AUC


@pytest.fixture(scope="module")
def chosen_pair(synthetic_store, tmp_path_factory):
    d = tmp_path_factory.mktemp("router-ckpt")
    small = make_checkpoint(synthetic_store, "topheavy", 0, d)
    large = make_checkpoint(synthetic_store, "ae3d", 1, d, role="large")
    wide = RouterConfig(margin=1.0, band="odds", signals=("gray_zone",))
    return small, replace(large, training={"selection": {"fusion": {"chosen": "mean", "router": "wide",
                                                                      "router_settings": wide.record()}}}), wide


def test_a_run_uses_the_large_checkpoints_router_unless_one_is_given(synthetic_store, chosen_pair):
    small, large, wide = chosen_pair
    assert router_from_record(large.chosen_router) == wide and resolve_router(None, large) == wide
    assert resolve_router(None, None) == RouterConfig() and resolve_router(RouterConfig(margin=0.1), large) == RouterConfig(margin=0.1)
    plain = replace(large, training={})
    assert plain.chosen_router is None and resolve_router(None, plain) == RouterConfig()  # a checkpoint from before
    ran = score_videos(synthetic_store, small, large, BatchBudget(0.2))
    assert ran.router == wide and ran.fusion == "mean"
    # margin 1 on the odds band: every clip's gray zone fires, and only that signal exists
    assert ran.clips.signal_gray_zone.all() and not ran.clips.signal_ood.any()
    given = score_videos(synthetic_store, small, large, BatchBudget(0.2), router=RouterConfig())
    assert given.router == RouterConfig() and not given.clips.signal_gray_zone.all()


def test_the_cli_leaves_the_router_to_the_checkpoint_unless_an_option_is_given():
    from vad.flows.cli import _score_settings

    args = dict(budget=None, bucket=None, frame_mode="clip", device="cpu", batch=None, precision="auto", compile=False)
    assert _score_settings(margin=None, ood_quantile=None, instability_quantile=None, signals=None, **args).router is None
    given = _score_settings(margin=None, ood_quantile=None, instability_quantile=None, signals=None, band="odds", **args)
    assert given.router == RouterConfig(band="odds")  # the other settings at their defaults
    with pytest.raises(ParameterError, match="band must be one of"):
        _score_settings(margin=None, ood_quantile=None, instability_quantile=None, signals=None, band="log", **args)


def test_a_pair_must_gain_surely_at_every_budget():
    from vad.tasks.evaluation.choices import worst_gain_low

    # surely better at 0.2 alone (the Le2i validation case: +0.001 at 0.2, -0.006 at 0.1) does not count
    once = {"gain_low": 0.001, "auc": 0.9, "gain_low_by_budget": {"0.1": -0.006, "0.2": 0.001, "0.3": -0.004}}
    every = {"gain_low": 0.002, "auc": 0.85, "gain_low_by_budget": {"0.1": 0.003, "0.2": 0.002, "0.3": 0.001}}
    assert worst_gain_low(once) == -0.006 and worst_gain_low(every) == 0.001
    plain = {"gain_low": 0.0, "auc": 0.8, "gain_low_by_budget": {"0.1": 0.0, "0.2": 0.0, "0.3": 0.0}}
    rows = [plain, once, every]
    assert best_paired([{**r, "gain_low": worst_gain_low(r)} for r in rows]) == 2
    assert np.isnan(worst_gain_low({"gain_low": 0.1, "gain_low_by_budget": {"0.1": float("nan"), "0.2": 0.1}}))
