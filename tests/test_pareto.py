"""The offline budget sweep and the Pareto front, on tables small enough to check by hand."""

import numpy as np
import pandas as pd
import pytest
from vad.tasks.evaluation.pareto import Simulation, pareto_front, sweep
from vad.tasks.inference.routing import BatchBudget

from vad.errors import ParameterError


def test_pareto_front_by_hand():
    # (cost, quality): (0, .5) front; (.1, .6) front; (.2, .55) dominated by (.1, .6); (.3, .9) front; (.3, .8) dominated
    cost = [0.0, 0.1, 0.2, 0.3, 0.3]
    quality = [0.5, 0.6, 0.55, 0.9, 0.8]
    assert pareto_front(cost, quality).tolist() == [True, True, False, True, False]


def _tables():
    # one video of 8 frames, clips of 4 at stride 4: clip 0 covers frames 0-3 (normal), clip 1 frames 4-7
    # (anomalous). The small model ranks them the wrong way round; the large one the right way.
    clips = pd.DataFrame({
        "video": ["v", "v"], "clip": [0, 1], "start_frame": [0, 4], "small_score": [0.9, 0.2],
        "large_score": [0.1, 0.8], "gray_distance": [0.05, 0.75], "ood_distance": [0.0, 0.0],
        "instability": [np.nan, np.nan], "signal_gray_zone": [False, False], "signal_ood": [False, False],
        "signal_unstable": [False, False], "signal_scene_cut": [False, False],
    })
    frames = pd.DataFrame({"video": ["v"] * 8, "frame": range(8), "label": pd.array([0] * 4 + [1] * 4, dtype="Int8")})
    return clips, frames


def test_sweep_simulates_each_budget_and_marks_the_front():
    clips, frames = _tables()
    out = sweep(clips, frames, clip_len=4, budgets=[0.0, 0.5, 1.0], buckets=[(1, 0)]).set_index(["policy", "setting"])
    assert out.loc[("small only", "-"), "micro_auc"] == 0.0
    assert out.loc[("large only", "-"), "micro_auc"] == 1.0
    # budget 0.5 escalates the harder clip: clip 0 (difficulty 1 - 0.05 = 0.95). Final scores 0.1 and 0.2:
    # the anomalous frames now score higher, AUC 1 at half the large-model calls
    half = out.loc[("batch", "0.5")]
    assert half.large_calls == 1 and half.micro_auc == 1.0 and bool(half.pareto)
    assert not out.loc[("large only", "-"), "pareto"]  # same quality, twice the cost
    # no signal fires, so the bucket escalates nothing: the small model's scores
    assert out.loc[("token bucket", "1,0"), "large_calls"] == 0
    assert out.loc[("batch", "0"), "micro_auc"] == 0.0 and out.loc[("batch", "1"), "micro_auc"] == 1.0


def test_sweep_needs_a_large_score_for_every_clip():
    clips, frames = _tables()
    clips.loc[0, "large_score"] = np.nan
    with pytest.raises(ParameterError, match="--budget 1"):
        sweep(clips, frames, clip_len=4)


def test_simulation_limits_escalation_to_the_named_signals():
    clips, frames = _tables()
    # clip 1 is out of distribution (its signal fired), clip 0 is nearer the threshold
    clips["signal_ood"] = [False, True]
    sim = Simulation(clips, frames, clip_len=4)
    # all signals: clip 1 has one signal fired (difficulty 1 + 0.25) and goes before clip 0 (0.95)
    assert sim.escalated(BatchBudget(0.5)).tolist() == [False, True]
    # gray zone only (it fired nowhere): closeness to the threshold decides, clip 0 goes
    assert sim.escalated(BatchBudget(0.5), signals=("gray_zone",)).tolist() == [True, False]
    assert sim.escalated(None).tolist() == [False, False]
    assert sim.escalated(None, everything=True).tolist() == [True, True]
    # the frames of an escalated clip take its large-model score, the others the small one's
    scores = sim.frames_for(np.array([True, False]))["score"].tolist()
    assert scores == [0.1] * 4 + [0.2] * 4
    with pytest.raises(ParameterError, match="no signal"):
        sim.escalated(BatchBudget(0.5), signals=("loud",))
