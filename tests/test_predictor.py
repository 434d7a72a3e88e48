"""The future-frame predictor: which frames it sees, which it predicts, and how its scores fill a clip."""

import numpy as np
import pytest
import torch
from vad.models import build

from vad.errors import ParameterError

T, H, W = 16, 32, 32


def _model(**config):
    torch.manual_seed(0)
    return build("predictor", in_channels=1, clip_len=T, height=H, width=W, **config).eval()


def _ramp():
    # frame t is filled with the value t / 100, so a window's content names its frames
    return (torch.arange(T, dtype=torch.float32) / 100).view(1, 1, T, 1, 1).expand(1, 1, T, H, W).contiguous()


def test_each_window_holds_the_context_frames_before_its_target():
    model = _model(context=4, step=2)
    assert model.targets().tolist() == [4, 6, 8, 10, 12, 14]
    windows = model.windows(_ramp())  # (6, 4, H, W)
    firsts = [windows[i, :, 0, 0].mul(100).round().int().tolist() for i in range(len(windows))]
    assert firsts == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9], [8, 9, 10, 11], [10, 11, 12, 13]]


def test_predictions_never_see_their_own_or_later_frames():
    model = _model(context=4, step=2)
    x = torch.rand(1, 1, T, H, W) * 2 - 1
    changed = x.clone()
    changed[:, :, 10] = -changed[:, :, 10]
    a, b = model(x).recon, model(changed).recon
    # targets 4, 6 and 8 see frames up to 7 only; target 12 sees frames 8-11, the changed one among them
    for t in (4, 6, 8):
        assert torch.equal(a[:, :, t], b[:, :, t])
    assert not torch.equal(a[:, :, 12], b[:, :, 12])
    # frames that are not predicted come back unchanged, so they add no error
    assert torch.equal(a[:, :, 5], x[:, :, 5]) and torch.equal(b[:, :, 11], changed[:, :, 11])


def test_with_a_zero_head_the_error_is_the_frame_difference_and_scores_fill_from_the_nearest_target():
    model = _model(context=4, step=4, score_patch=8)  # targets 4, 8, 12
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)  # the prediction is the previous frame
    x = torch.full((1, 1, T, H, W), -1.0)
    x[:, :, 8:, 0:8, 0:8] = 1.0  # an 8x8 square appears at frame 8 and stays
    x[:, :, 12:, 24:32, 24:32] = 0.0  # another appears at frame 12
    s = model.score(x)
    # target 4: nothing changed, error 0; target 8: the square, (1 - -1)^2 = 4 over a whole 8x8 window;
    # target 12: the second square, (0 - -1)^2 = 1
    per_target = {4: 0.0, 8: 4.0, 12: 1.0}
    nearest = [4, 4, 4, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12, 12]  # frame 6 ties between 4 and 8: the earlier
    np.testing.assert_allclose(s.frames[0].numpy(), [per_target[t] for t in nearest], atol=1e-6)
    assert s.clip.item() == pytest.approx(np.mean([per_target[t] for t in nearest]))


def test_the_loss_counts_predicted_frames_only():
    model = _model(context=4, step=2).train()
    x = torch.rand(2, 1, T, H, W) * 2 - 1
    out = model(x)
    loss, parts = model.loss(x, out)
    assert set(parts) == {"mse", "gradient"} and loss.item() > 0
    # changing a frame that is neither predicted nor seen by any prediction (the last one, 15) leaves the loss alone
    y = x.clone()
    y[:, :, 15] = 0.0
    out.recon = out.recon.clone()
    out.recon[:, :, 15] = y[:, :, 15]
    assert model.loss(y, out)[0].item() == pytest.approx(loss.item())


@pytest.mark.parametrize("config, match", [
    (dict(context=0), "context"), (dict(context=T), "context"), (dict(step=0), "step"),
    (dict(gradient_weight=-1.0), "gradient_weight"), (dict(channels=(8,)), "channels"),
])
def test_bad_settings_are_refused(config, match):
    with pytest.raises(ParameterError, match=match):
        _model(**config)
