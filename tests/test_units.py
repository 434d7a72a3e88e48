"""Settings in seconds and relative sizes: a 25 fps 720p camera and a 10 fps 240p one get the same
model for the same scene; the defaults are today's values at Ped2 (10 fps, 240x360)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from vad.models import build, make_config


def test_motion_patch_lag_and_patch_follow_the_frame_rate_and_height():
    ped2 = make_config("motion_patch", {"fps": 10.0, "height": 240, "width": 360})
    hd = make_config("motion_patch", {"fps": 25.0, "height": 720, "width": 1080})
    assert (ped2.lag_frames, ped2.patch, ped2.grid) == (1, 16, (29, 44))  # Ped2's values before the units
    assert (hd.lag_frames, hd.patch, hd.grid) == (3, 48, (29, 44))  # 0.1 s = 2.5 frames, rounded half up; 16 * 3 px
    assert make_config("motion_patch", {"fps": 30.0}).lag_frames == 3
    assert make_config("motion_patch", {"fps": 5.0}).lag_frames == 1  # 0.5 frames: at least one
    # a checkpoint made before the units carries pixels and frames: they still mean what they meant
    old = make_config("motion_patch", {"fps": 25.0, "height": 720, "width": 1080, "score_patch": 16, "lag": 1})
    assert (old.lag_frames, old.patch) == (1, 16)


def test_objects_window_step_and_box_follow_the_frame_rate_and_height():
    ped2 = make_config("objects", {"fps": 10.0, "height": 240, "width": 360})
    hd = make_config("objects", {"fps": 25.0, "height": 720, "width": 1280})
    assert (ped2.self_window, ped2.background_step, ped2.min_box) == (150, 5, 10)  # Ped2's values before the units
    assert (hd.self_window, hd.background_step, hd.min_box) == (375, 13, 30)  # 15 s, 0.5 s (12.5 frames), 10/240
    # a checkpoint made before the units: frames and pixels, read at its own rate (10 fps when it has none)
    old = make_config("objects", {"height": 240, "width": 320, "min_box": 12, "self_window": 100, "background_step": 4})
    assert (old.min_box, old.self_window, old.background_step) == (12, 100, 4)


def test_the_same_scene_at_twice_the_rate_and_three_times_the_size_scores_alike():
    # a bright square crossing a dark frame at 20 fps, 24x36; the 10 fps camera sees every other frame
    # and the big one sees it 3x larger (nearest-neighbour): with patches of 1/12 of the height
    # (2 px and 6 px) and a lag of 0.1 s (1 and 2 frames) the two models see the same energies
    g = torch.Generator().manual_seed(0)
    fast = torch.zeros(1, 1, 16, 24, 36)
    for t in range(16):
        fast[0, 0, t, 8:14, 2 + t : 8 + t] = 0.5 + 0.5 * torch.rand(6, 6, generator=g)
    slow, big = fast[:, :, ::2], F.interpolate(fast[0], scale_factor=3, mode="nearest")[None]
    a = build("motion_patch", fps=10.0, clip_len=8, height=24, width=36, patch_frac=1 / 12).eval()
    b = build("motion_patch", fps=20.0, clip_len=16, height=72, width=108, patch_frac=1 / 12).eval()
    assert (a.config.patch, a.config.lag_frames, b.config.patch, b.config.lag_frames) == (2, 1, 6, 2)
    ea, eb = a.energy(slow), b.energy(big)  # (1, 8, 23, 35) both
    assert ea.shape == (1, 8, 23, 35) and eb.shape == (1, 16, 23, 35)
    assert torch.allclose(ea[:, 1:], eb[:, 2::2], atol=1e-6)  # frame t at 10 fps is frame 2t at 20 fps
    assert torch.allclose(a.score(slow).frames[:, 1:], b.score(big).frames[:, 2::2], atol=1e-6)
