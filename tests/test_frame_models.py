"""The single-frame ResNet-18 autoencoder and the temporal feature forecaster: which frames they
score, what their errors measure, and how their scores fill a clip."""

import numpy as np
import pytest
import torch
from vad.models import build

from vad.errors import ParameterError

T, H, W = 16, 32, 32


def _model(arch, **config):
    torch.manual_seed(0)
    return build(arch, **{"in_channels": 1, "clip_len": T, "height": H, "width": W, **config}).eval()


def _clip(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, T, H, W, generator=g) * 2 - 1


def test_resnet18_ae_rebuilds_every_step_th_frame_and_fills_the_rest_from_the_nearest():
    model = _model("resnet18_ae", base_channels=8, step=4)
    assert model.targets().tolist() == [0, 4, 8, 12]
    x = _clip()
    out = model(x)
    for t in (1, 5, 11, 15):  # not rebuilt: returned unchanged, so they add no error
        assert torch.equal(out.recon[:, :, t], x[:, :, t])
    s = model.score(x).frames[0]
    nearest = [0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12, 12]  # frames 2, 6, 10 tie: the earlier
    np.testing.assert_array_equal(s.numpy(), s[nearest].numpy())
    # a frame that is not rebuilt does not change any score
    changed = x.clone()
    changed[:, :, 5] = 1.0
    assert torch.equal(model.score(changed).frames, model.score(x).frames)


def test_feature_consistency_is_zero_for_equal_features_and_four_for_opposite_ones():
    model = _model("resnet18_ae", base_channels=8)
    feats = [torch.randn(2, 8 * 2**i, 8 // 2**i, 8 // 2**i) for i in range(4)]
    np.testing.assert_allclose(model.feature_error(feats, feats, (16, 16)).numpy(), 0.0, atol=1e-6)
    # 2 - 2 cos with cos = -1, at every stage and cell
    np.testing.assert_allclose(model.feature_error(feats, [-f for f in feats], (16, 16)).numpy(), 4.0, atol=1e-5)


def test_flip_averaging_makes_the_score_blind_to_mirroring():
    x = _clip(1)
    with_tta = _model("resnet18_ae", base_channels=8, flip_tta=True, score_patch=16)
    without = _model("resnet18_ae", base_channels=8, flip_tta=False, score_patch=16)
    # the error map of a mirrored clip is the mirrored error map, and 16-px windows at stride 8 over
    # 32 px are placed symmetrically, so the worst window is the same
    torch.testing.assert_close(with_tta.score(x.flip(-1)).frames, with_tta.score(x).frames)
    assert not torch.allclose(without.score(x.flip(-1)).frames, without.score(x).frames)


def test_forecasts_see_only_earlier_frames_and_errors_are_bounded():
    model = _model("forecaster", channels=(4, 8), horizon=4)
    x = _clip(2)
    changed = x.clone()
    changed[:, :, 10] = -changed[:, :, 10]
    a = model.forecast_error(model.encode(x))[0].mean(dim=(1, 2))  # (12,) errors of frames 4..15
    b = model.forecast_error(model.encode(changed))[0].mean(dim=(1, 2))
    differs = {i + 4 for i in torch.nonzero(a != b).flatten().tolist()}
    # frame 10 is the target of the forecast made after frame 6, and the forecasts made after
    # frames 10 and 11 (for frames 14 and 15) have seen it; frames 4-9 and 11-13 are untouched
    assert differs == {10, 14, 15}
    assert a.min() >= 0 and a.max() <= 4  # 2 - 2 cos of unit vectors


def test_forecaster_scores_the_first_horizon_frames_like_the_first_forecast_one():
    model = _model("forecaster", channels=(4, 8), horizon=4)
    s = model.score(_clip(3)).frames[0]
    assert torch.equal(s[:4], s[4].expand(4))
    assert len(set(s[4:].tolist())) > 1


def test_heldout_error_is_the_forecast_error_plus_the_weighted_reconstruction_error():
    model = _model("forecaster", channels=(4, 8), recon_weight=0.5)
    x = _clip(4)
    out = model(x)
    expected = model.forecast_error(model.encode(x)).mean() + 0.5 * (out.recon - x).pow(2).mean()
    assert model.heldout_error(x, out).item() == pytest.approx(expected.item(), rel=1e-5)
    vae = _model("vae3d")  # the default criterion: mean squared reconstruction error per clip
    out = vae(x)
    assert vae.heldout_error(x, out).item() == pytest.approx((out.recon - x).pow(2).mean().item(), rel=1e-5)


@pytest.mark.parametrize("arch, bad", [
    ("resnet18_ae", {"step": 0}), ("resnet18_ae", {"base_channels": 0}), ("resnet18_ae", {"height": 48}),
    ("forecaster", {"horizon": 16}), ("forecaster", {"channels": ()}), ("forecaster", {"recon_weight": -1.0}),
])
def test_bad_settings_are_refused(arch, bad):
    with pytest.raises(ParameterError, match=arch):
        _model(arch, **bad)
