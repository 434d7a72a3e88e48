"""The fusion rule of escalated clips: `routing.fuse` by hand, "replace" as scoring always was, and a
replayed sweep that fuses exactly as a real run does."""

from dataclasses import replace

import numpy as np
import pytest

from conftest import make_checkpoint
from vad.tasks.evaluation.pareto import Simulation
from vad.tasks.inference.routing import FUSIONS, BatchBudget, fuse
from vad.tasks.inference.scoring import ScoreSettings, aggregate_frames, resolve_fusion, score_videos

from vad.errors import ParameterError


def test_fuse_by_hand():
    small, large = np.array([0.2, 0.5, 0.0]), np.array([0.8, 0.9, 1.0])
    assert fuse("replace", small, large).tolist() == [0.8, 0.9, 1.0]
    np.testing.assert_allclose(fuse("mean", small, large), [0.5, 0.7, 0.5])
    # logit(0.2) = -logit(0.8): they cancel; logit(0.5) = 0 and logit(0.9) = ln 9, whose half is ln 3 -> 3/4;
    # 0 and 1 are clipped to 1e-6 and 1 - 1e-6, symmetric, so they cancel too
    np.testing.assert_allclose(fuse("logit_mean", small, large), [0.5, 0.75, 0.5], atol=1e-12)
    assert FUSIONS[0] == "replace"
    with pytest.raises(ParameterError, match="fusion must be one of replace, mean, logit_mean, got 'max'"):
        fuse("max", small, large)


@pytest.fixture(scope="module")
def pair(synthetic_store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fusion-ckpt")
    return make_checkpoint(synthetic_store, "topheavy", 0, folder), make_checkpoint(synthetic_store, "ae3d", 1, folder)


@pytest.fixture(scope="module")
def videos(synthetic_store):
    """Two test videos: enough clips for a budget, at a third of the cost of all six."""
    from vad.storage import ClipStore

    return ClipStore.open(synthetic_store).video_ids(split="test")[:2]


def test_replace_is_the_old_final_score_and_mean_fuses_only_escalated_clips(synthetic_store, pair, videos):
    small, large = pair
    runs = {rule: score_videos(synthetic_store, small, large, BatchBudget(0.3), videos=videos, fusion=rule)
            for rule in ("replace", "mean")}
    clips = runs["replace"].clips
    esc = clips.escalated.to_numpy()
    assert 0 < esc.sum() < len(esc)
    old = np.where(esc, clips.large_score, clips.small_score)  # what scoring wrote before the fusion rule
    assert np.array_equal(clips.score.to_numpy(), old)
    first = clips[clips.video == clips.video.iloc[0]]
    n = int((runs["replace"].frames.video == first.video.iloc[0]).sum())
    expected = aggregate_frames(n, first.start_frame.to_numpy(), 16, old[: len(first)])
    assert np.array_equal(runs["replace"].frames.score.to_numpy()[:n], expected)
    mean = runs["mean"].clips
    np.testing.assert_allclose(mean.score[esc], (clips.small_score[esc] + clips.large_score[esc]) / 2)
    assert np.array_equal(mean.score[~esc], clips.small_score[~esc])
    assert runs["mean"].fusion == "mean" and runs["replace"].fusion == "replace"


def test_a_replay_fuses_as_a_real_run(synthetic_store, pair, videos):
    small, large = pair
    every = score_videos(synthetic_store, small, large, BatchBudget(1.0), videos=videos, fusion="logit_mean")
    sim = Simulation(every.clips, every.frames, clip_len=16, fusion="logit_mean")
    real = score_videos(synthetic_store, small, large, BatchBudget(0.3), videos=videos, fusion="logit_mean")
    escalated = sim.escalated(BatchBudget(0.3))
    assert escalated.tolist() == real.clips.escalated.tolist()
    np.testing.assert_allclose(sim.frames_for(escalated).score, real.frames.score, rtol=0, atol=1e-6)


def test_the_checkpoint_choice_is_the_default_and_a_bad_rule_is_refused_before_work(pair, vad_main, tmp_path):
    small, large = pair
    assert resolve_fusion(None, large) == "replace" and resolve_fusion("mean", large) == "mean"
    chose = replace(large, training={"selection": {"fusion": {"chosen": "logit_mean"}}})
    assert resolve_fusion(None, chose) == "logit_mean" and resolve_fusion("replace", chose) == "replace"
    with pytest.raises(ParameterError, match="fusion must be one of"):
        ScoreSettings(fusion="max")
    for command in (["score", "--dataset", "nothing-here"], ["run", "--dataset", "nothing-here"]):
        code, out, err = vad_main(*command, "--root", str(tmp_path), "--fusion", "max")
        assert code != 0
        assert "fusion must be one of replace, mean, logit_mean, got 'max'" in out + err
        assert "Traceback" not in out + err
