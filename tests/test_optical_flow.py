"""Optical flow (Lucas-Kanade) and its encoding as model input: directions, sizes and the still case."""

import numpy as np
import pytest
import torch
from vad.tasks.runtime.model_input import InputSpec, prepare_clips
from vad.tasks.runtime.optical_flow import MAX_SPEED, flow_clips, lucas_kanade

from vad.errors import ParameterError

H = W = 64


def _pattern(dx: float = 0.0, dy: float = 0.0) -> torch.Tensor:
    """(1, 1, H, W) smooth texture in [0.25, 0.75], moved by (dx, dy) pixels."""
    yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    return (0.5 + 0.25 * torch.sin((xx - dx) / 4) * torch.cos((yy - dy) / 5)).view(1, 1, H, W)


def _inner(t: torch.Tensor) -> torch.Tensor:
    return t[..., 8:-8, 8:-8]  # away from the borders, where the window sees beyond the frame


@pytest.mark.parametrize("dx, dy", [(1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (2.0, 0.0)])
def test_a_moved_texture_gives_its_shift(dx, dy):
    uv = _inner(lucas_kanade(_pattern(), _pattern(dx, dy)))
    u, v = float(uv[:, 0].mean()), float(uv[:, 1].mean())
    # a small-motion method: close to the shift, slightly under it (measured 0.85 for 1 px, 1.73 for 2 px)
    for got, want in ((u, dx), (v, dy)):
        if want == 0:
            assert abs(got) < 0.05
        else:
            assert 0.75 * abs(want) < abs(got) < 1.05 * abs(want) and np.sign(got) == np.sign(want)


def test_still_frames_and_a_brightening_flat_frame_give_no_flow():
    assert torch.equal(lucas_kanade(_pattern(), _pattern()), torch.zeros(1, 2, H, W))
    flat = torch.full((1, 1, H, W), 0.3)
    assert torch.equal(lucas_kanade(flat, flat + 0.2), torch.zeros(1, 2, H, W))  # nothing to follow


def test_flow_clips_encode_direction_and_speed_and_repeat_the_first_frame():
    moving = torch.stack([_pattern(1.5 * i) for i in range(4)], dim=2)  # (1, 1, 4, H, W): 1.5 px right per frame
    f = flow_clips(moving)
    assert f.shape == (1, 3, 4, H, W) and f.min() >= 0 and f.max() <= 1
    assert torch.equal(f[:, :, 0], f[:, :, 1])
    x, y, speed = (float(_inner(f[0, c, 1:]).mean()) for c in range(3))
    assert x == pytest.approx(0.5 + 1.5 / (2 * MAX_SPEED), abs=0.02)  # 0.6875
    assert y == pytest.approx(0.5, abs=0.01)
    assert speed == pytest.approx(1.5 / MAX_SPEED, abs=0.03)  # 0.375
    left = flow_clips(moving.flip(2))  # the same frames backwards: moving left
    assert float(_inner(left[0, 0, 1:]).mean()) < 0.4
    still = flow_clips(torch.stack([_pattern()] * 3, dim=2))
    assert torch.equal(still, torch.tensor([0.5, 0.5, 0.0]).view(1, 3, 1, 1, 1).expand(1, 3, 3, H, W))


def test_flow_as_model_input_takes_gray_or_rgb_frames_and_maps_the_value_range():
    frames = (torch.stack([_pattern(i)[0, 0] for i in range(3)]) * 255).round().to(torch.uint8)  # (T, H, W)
    gray = frames[None, ..., None]
    rgb = gray.expand(-1, -1, -1, -1, 3)
    spec = InputSpec(3, 1, H, W, 3, flow=True)
    a, b = prepare_clips(gray, spec, (0.0, 1.0)), prepare_clips(rgb, spec, (0.0, 1.0))
    assert a.shape == (1, 3, 3, H, W) and torch.allclose(a, b, atol=1e-4)  # luma of gray-as-RGB is the gray
    tanh = prepare_clips(gray, spec, (-1.0, 1.0))
    assert torch.allclose(tanh, a * 2 - 1, atol=1e-6)
    assert InputSpec(**spec.to_dict()).flow and not InputSpec(3, 1, H, W, 3).flow


def test_bad_flow_requests_are_refused():
    with pytest.raises(ParameterError, match="3 channels"):
        InputSpec(16, 8, 32, 32, 1, flow=True)
    with pytest.raises(ParameterError, match="not both"):
        InputSpec(16, 8, 32, 32, 3, motion=True, flow=True)
    with pytest.raises(ParameterError, match="at least 2 frames"):
        flow_clips(torch.zeros(1, 1, 1, 32, 32))
    with pytest.raises(ParameterError, match="odd window"):
        lucas_kanade(_pattern(), _pattern(), window=4)
    with pytest.raises(ParameterError, match="one shape"):
        lucas_kanade(_pattern(), torch.zeros(1, 1, 8, 8))


def test_flow_stays_float32_inside_a_bfloat16_autocast():
    # scoring passes run under autocast (bfloat16 on CUDA); the flow's 2x2 solve needs float32
    moving = torch.stack([_pattern(1.5 * i) for i in range(3)], dim=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = flow_clips(moving)
    assert inside.dtype == torch.float32 and torch.equal(inside, flow_clips(moving))
