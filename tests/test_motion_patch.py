"""motion_patch: per-patch frame-difference energy against statistics fitted on normal clips."""

from __future__ import annotations

import pytest
import torch
from vad.models import build
from vad.models.motion_patch import BINS
from vad.tasks.runtime.checkpoint import load_checkpoint
from vad.tasks.learning.training import TrainConfig, train_model

from vad.errors import ParameterError


def _model(**kw):
    return build("motion_patch", clip_len=4, height=8, width=8, score_patch=4, **kw).eval()


def _clip(values):
    """(1, 1, T, 8, 8) clip whose frame t is flat at values[t], except as the caller changes it."""
    return torch.tensor(values, dtype=torch.float32)[None, None, :, None, None].expand(1, 1, len(values), 8, 8).clone()


def test_energy_by_hand():
    model = _model()
    x = _clip([0.0, 0.0, 0.0, 0.0])
    x[0, 0, 2, :4, :4] = 0.5  # a 4x4 patch lights up in frame 2 and goes out in frame 3
    e = model.energy(x)  # (1, 4, 3, 3): 4-px windows at stride 2 over 8x8
    assert e.shape == (1, 4, 3, 3)
    assert e[0, 2, 0, 0] == pytest.approx(0.5) and e[0, 3, 0, 0] == pytest.approx(0.5)
    assert e[0, 2, 1, 1] == pytest.approx(0.5 * 4 / 16)  # the window at (2, 2) overlaps a 2x2 corner
    assert e[0, 1].abs().max() == 0 and torch.equal(e[0, 0], e[0, 1])  # frame 0 takes frame 1's energy
    s = model.score(x)
    assert s.frames[0].tolist() == pytest.approx([0.0, 0.0, 0.5, 0.5]) and s.clip[0] == pytest.approx(0.25)


def test_fit_sets_the_normal_levels_and_minus_q_subtracts_them():
    model = _model(statistic="minus_q", quantile=0.5)
    normal = _clip([0.0, 0.1, 0.2, 0.3])  # every patch changes by 0.1 a frame
    record = model.fit([normal])
    assert record["frames"] == 4 and model.is_fitted
    assert torch.allclose(model.cell_mean, torch.full((3, 3), 0.1))
    # the quantile is read from a histogram of BINS bins: within half a bin of 0.1
    assert torch.allclose(model.cell_q, torch.full((3, 3), 0.1), atol=0.5 / BINS, rtol=0)
    assert model.score(normal).frames.abs().max() <= 0.5 / BINS  # normal motion scores zero above its level
    faster = _clip([0.0, 0.3, 0.6, 0.9])
    assert model.score(faster).frames[0].tolist() == pytest.approx([0.2] * 4, abs=0.5 / BINS)


def test_a_bad_setting_is_refused():
    with pytest.raises(ParameterError, match="lag"):
        _model(lag=4)
    with pytest.raises(ParameterError, match="lag"):
        _model(lag_s=0.4)  # 4 frames at 10 fps: the clip has 4
    with pytest.raises(ParameterError, match="statistic"):
        _model(statistic="median")


def test_vad_train_fits_it_and_the_checkpoint_scores_alike(synthetic_store, tmp_path):
    result = train_model(synthetic_store, tmp_path / "mp.pt", TrainConfig(role="small", arch="motion_patch", workers=0))
    assert result.stopped == "fitted" and result.epochs_run == 0 and "fitted on" in result.summary()
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.input.height == 32 and ckpt.input.width == 32  # the store's size: it reads frames as stored
    assert ckpt.model_config["fps"] == 25.0  # the store's frame rate, for the lag in seconds (3 frames)
    assert ckpt.build_model().config.lag_frames == 3
    assert ckpt.calibration.threshold > 0
    model = ckpt.build_model()
    assert model.is_fitted and float(model.energy_scale) > 0
    x = torch.rand(2, 1, 16, 32, 32)
    assert torch.equal(model.score(x).frames, ckpt.scoring_model().score(x).frames)
