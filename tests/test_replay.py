"""One replay: the report's budget sweep replays routing and frame assembly with the functions a real
run uses, so its frames at a budget are the frames a real routed run at that budget writes."""

import numpy as np
import pandas as pd
import pytest

from conftest import make_checkpoint
from vad.storage import run_dir, write_table
from vad.tasks.evaluation.pareto import Simulation, sweep
from vad.tasks.evaluation.metrics import evaluate
from vad.tasks.inference.routing import BatchBudget, TokenBucket
from vad.tasks.inference.scoring import score_videos

from vad.errors import ParameterError


@pytest.fixture(scope="module")
def pair(synthetic_store, tmp_path_factory):
    """Untrained small and large checkpoints, with a frame-level calibration for the frame mode."""
    from dataclasses import replace

    from vad.tasks.runtime.calibration import EmpiricalRank

    folder = tmp_path_factory.mktemp("replay-ckpt")
    out = []
    for arch, seed in (("topheavy", 0), ("ae3d", 1)):
        ck = make_checkpoint(synthetic_store, arch, seed, folder)
        if ck.calibration.frames is None:
            ck.calibration = replace(ck.calibration, frames=EmpiricalRank.fit(np.random.default_rng(seed).uniform(0, 0.05, 400)))
        out.append(ck)
    return tuple(out)


@pytest.fixture(scope="module")
def every(synthetic_store, pair, tmp_path_factory):
    """A budget-1 run in each frame mode (every clip scored by both models), and its tables as stored."""
    small, large = pair
    root = tmp_path_factory.mktemp("replay-runs")
    out = {}
    for mode in ("clip", "frame"):
        result = score_videos(synthetic_store, small, large, BatchBudget(1.0), frame_mode=mode)
        out[mode] = (result, *_stored(root, f"all-{mode}", result))
    return out


def _stored(root, name, result):
    """The run's tables as the report reads them back from Parquet."""
    write_table(root, "clips", "synthetic", name, result.clips)
    write_table(root, "frames", "synthetic", name, result.frames)
    # one run's folder: a read across runs takes its columns from one of them (pyarrow's dataset schema)
    return (pd.read_parquet(run_dir(root, t, "synthetic", name)) for t in ("clips", "frames"))


@pytest.mark.parametrize("frame_mode", ["clip", "frame"])
def test_the_sweep_gives_the_frames_of_a_real_routed_run(synthetic_store, pair, every, frame_mode):
    small, large = pair
    _, clips, frames = every[frame_mode]
    sim = Simulation(clips, frames, clip_len=small.input.clip_len, frame_mode=frame_mode)
    for budget in (BatchBudget(0.3), TokenBucket(2, 0.1)):
        real = score_videos(synthetic_store, small, large, budget, frame_mode=frame_mode)
        escalated = sim.escalated(budget)
        assert escalated.tolist() == real.clips.escalated.tolist() and 0 < escalated.sum() < len(escalated)
        replayed = sim.frames_for(escalated)
        assert replayed.escalated.tolist() == real.frames.escalated.tolist()
        # equal but for float32 rounding: the large model's per-frame errors of a clip move in the
        # last bits with the other clips of its batch (a real run at a lower budget batches fewer)
        for column in ("score", "small_score"):
            np.testing.assert_allclose(replayed[column], real.frames[column], rtol=0, atol=1e-6, err_msg=f"{budget} {column}")
        if isinstance(budget, BatchBudget):  # and so the sweep's row at that budget is the real run's
            row = sweep(clips, frames, clip_len=small.input.clip_len, budgets=[0.3], frame_mode=frame_mode).iloc[-1]
            assert row.micro_auc == pytest.approx(evaluate(real.frames, "score")[0]["micro_auc"], abs=1e-4)


def test_the_modes_differ_and_a_frame_mode_sweep_needs_the_per_frame_scores(every):
    result, clips, frames = every["clip"]
    with pytest.raises(ParameterError, match="frame-mode frame"):
        Simulation(clips, frames, clip_len=16, frame_mode="frame")
    _, f_clips, f_frames = every["frame"]
    none = np.zeros(len(clips), bool)
    a = Simulation(clips, frames, clip_len=16).frames_for(none)
    b = Simulation(f_clips, f_frames, clip_len=16, frame_mode="frame").frames_for(none)
    assert not np.allclose(a.score, b.score)
    # nothing escalated: the small model's frame scores of the run, in either mode
    assert np.array_equal(a.score.to_numpy(), result.frames.small_score.to_numpy())
    assert np.array_equal(b.score.to_numpy(), every["frame"][0].frames.small_score.to_numpy())
