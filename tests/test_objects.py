"""objects: foreground boxes, flow speed, and a fit on tiny synthetic clips (models/objects.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vad.models import build
from vad.models._inference import for_inference
from vad.tasks.runtime.checkpoint import load_checkpoint
from vad.tasks.learning.training import TrainConfig, train_model

from vad.errors import ParameterError
from vad.models.objects import GROUPS

H = W = 64
T = 8
BG = 60  # flat background gray level
SIDE = 12
LANES = (4, 18, 32, 46)  # rows of the squares' top edges: each pixel is covered in far fewer than half the frames


def _model(**kw):
    """The model at H x W with the pixel sizes of the defaults at 240 rows: 10 px minimum box, 5 px blur, 7 px closing."""
    return build("objects", clip_len=T, height=H, width=W, **{"min_box_frac": 10 / H, "blur_frac": 5 / H, "close_frac": 7 / H, **kw}).eval()


def _texture(side: int = SIDE, seed: int = 0) -> np.ndarray:
    """A random texture in [140, 230] (flow needs texture; a flat square's inside does not move visibly)."""
    return np.random.default_rng(seed).integers(140, 231, size=(side, side)).astype(np.uint8)


def _clip(speed: float, *, x0: float = 4.0, lane: int = 0, frames: int = T, present: int | None = None) -> torch.Tensor:
    """(1, 1, frames, H, W) in [0, 1]: the textured square moving right at `speed` px/frame on the flat
    background, shown in the first `present` frames (all by default)."""
    x = np.full((frames, H, W), BG, np.uint8)
    tex = _texture()
    for t in range(frames if present is None else present):
        a = round(x0 + speed * t)
        x[t, LANES[lane] : LANES[lane] + SIDE, a : a + SIDE] = tex
    return torch.from_numpy(x).float().div(255.0)[None, None]


def _normal_clips() -> list[torch.Tensor]:
    """24 normal clips in batches of 4: the square at 1 px/frame, each clip in its own lane and start."""
    clips = [_clip(1.0, x0=4.0 + 5 * (i // 4), lane=i % 4) for i in range(24)]
    return [torch.cat(clips[i : i + 4]) for i in range(0, 24, 4)]


# the fit: a small autoencoder, few epochs; the self window (4 frames at 10 fps) below a clip so
# neighbouring clips count
FIT = {"ae_epochs": 3, "self_window_s": 0.4}


@pytest.fixture(scope="module")
def fitted():
    model = _model(**FIT)
    record = model.fit(_normal_clips())
    return model.eval(), record


def test_a_12px_square_is_one_12x12_box_and_an_8px_one_is_none():
    model = _model()
    model.background.fill_(BG)
    x = np.full((T, H, W), BG, np.uint8)
    x[:, 10:22, 20:32] = BG + 30  # 12x12; at contrast 30 the 5x5 blur leaves exactly the square above 10 levels
    x[:, 40:48, 40:48] = BG + 30  # 8x8: below the 10 px minimum
    obj = model.objects(torch.from_numpy(x).float().div(255.0)[None, None])
    assert obj["frame"].tolist() == list(range(T))  # one object in each frame
    assert obj["box"].tolist() == [[20, 10, 12, 12]] * T  # x0, y0, w, h
    assert obj["velocity"].abs().max() < 0.1  # it does not move


def test_flow_speed_of_a_moving_and_a_static_square():
    model = _model()
    model.background.fill_(BG)
    moving = model.objects(_clip(3.0))["velocity"]
    still = model.objects(_clip(0.0))["velocity"]
    assert len(moving) == len(still) == T
    assert moving[:, 0].mean() == pytest.approx(3.0, abs=0.5)  # mean magnitude over the square, px/frame
    assert still.abs().max() < 0.1


def test_fit_learns_normal_objects(fitted):
    model, record = fitted
    assert record["objects"] == 24 * T and record["frames"] == 24 * T  # one object in every frame
    assert bool(model.is_fitted) and model.vel_bank.shape == (24 * T, 2) and model.app_bank.shape == (24 * T, 32)
    assert int(model.background.float().median()) == BG  # the squares are nowhere most of the time


def test_a_fast_object_scores_above_a_normal_one_and_no_object_scores_zero(fitted):
    model, _ = fitted
    x = torch.cat([_clip(1.0, x0=7.0, lane=1), _clip(3.0, x0=7.0, lane=1), _clip(1.0, x0=7.0, lane=2, present=4)])
    s = model.score(x)
    assert s.clip.shape == (3,) and s.frames.shape == (3, T) and s.uncertainty.shape == (3,)
    assert s.embedding.shape == (3, 12)
    assert s.frames[1].min() > s.frames[0].max()  # three times the normal speed: every frame above the normal clip's worst
    assert torch.equal(s.frames[2, 4:], torch.zeros(T - 4))  # the square left after frame 3
    assert torch.allclose(s.clip, s.frames.mean(dim=1))
    empty = model.score(torch.full((1, 1, T, H, W), BG / 255.0))
    assert empty.frames.abs().max() == 0 and empty.embedding[0, -1] == 1.0  # a constant keeps the cosine defined


def test_save_load_and_the_scoring_copy_score_alike(fitted, tmp_path):
    model, _ = fitted
    torch.save(model.state_dict(), tmp_path / "objects.pt")
    fresh = _model(**FIT)
    assert fresh.vel_bank.shape == (0, 2)
    fresh.load_state_dict(torch.load(tmp_path / "objects.pt", weights_only=True))  # resizes the banks
    x = torch.cat([_clip(1.0, x0=9.0, lane=3), _clip(2.5, lane=0)])
    want = model.score(x)
    for other in (fresh.eval(), for_inference(model)):
        got = other.score(x)
        for field in ("clip", "frames", "embedding", "uncertainty"):
            assert torch.equal(getattr(got, field), getattr(want, field)), field


def test_fit_is_deterministic(fitted):
    model, _ = fitted
    again = _model(**FIT)
    again.fit(_normal_clips())
    for name, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name


def test_flow_at_half_the_size_measures_the_speed_in_stored_pixels():
    """`flow_scale` 0.5: DIS runs on frames shrunk to 32 x 32 and its vectors come back in the stored
    64 x 64 pixels, so a square moving 4 px a frame measures about 4, not 2."""
    model = _model(flow_scale=0.5)
    model.background.fill_(BG)
    moving = model.objects(_clip(4.0))["velocity"]
    still = model.objects(_clip(0.0))["velocity"]
    assert len(moving) == len(still) == T
    assert moving[:, 0].mean() == pytest.approx(4.0, abs=1.0)
    assert still.abs().max() < 0.1


def test_bad_settings_are_refused():
    with pytest.raises(ParameterError, match="gray input only"):
        _model(in_channels=3)
    with pytest.raises(ParameterError, match="blur_frac"):
        _model(blur_frac=1.5)
    with pytest.raises(ParameterError, match="noise_k"):
        _model(noise_k=-1.0)
    with pytest.raises(ParameterError, match="flow_preset"):
        _model(flow_preset="slow")
    with pytest.raises(ParameterError, match="flow_scale"):
        _model(flow_scale=0.05)
    with pytest.raises(ParameterError, match="expected gray clips"):
        _model().score(torch.zeros(1, 1, T, 32, 32))


def test_vad_train_fits_it_and_the_checkpoint_scores(synthetic_store, tmp_path):
    # The store is 32x32: its squares (12 px at 120x160) are about 3x2 px there, so the minimum box is
    # 2 px; a few autoencoder epochs keep the test short.
    config = TrainConfig(role="large", arch="objects", workers=0, model={"min_box_frac": 2 / 32, "ae_epochs": 3})
    result = train_model(synthetic_store, tmp_path / "objects.pt", config)
    assert result.stopped == "fitted" and "fitted on" in result.summary()
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.arch == "objects" and ckpt.input.height == 32 and ckpt.input.width == 32
    history = ckpt.training["history"][0]
    assert history["objects"] > 0 and history["fit"]
    model = ckpt.build_model()
    assert bool(model.is_fitted) and len(model.vel_bank) == history["objects"]
    x = torch.rand(2, 1, 16, 32, 32)
    a, b = model.score(x), ckpt.scoring_model().score(x)
    assert a.frames.shape == (2, 16) and torch.equal(a.frames, b.frames)


def test_the_bank_is_a_capped_sample_and_the_background_comes_from_the_leading_frames():
    # 64 normal frames, then 64 white ones: with at most 32 frames (of H x W bytes) held for the
    # background (the first batch), the white ones stay out of it; without the cap the median of the
    # frames (every 5th: 13 normal, 13 white) lies halfway
    stream = _normal_clips()[:2] + [torch.ones(4, 1, T, H, W)] * 2
    capped = _model(**FIT, bank_cap=40, background_mb=32 * H * W / 2**20)
    record = capped.fit(iter(stream))  # a one-shot iterator: the fit reads it once
    assert torch.equal(capped.background, torch.full((H, W), BG, dtype=torch.uint8))
    assert record["objects"] == 128 and record["banked"] == 40 and record["frames"] == 128  # one object a frame
    assert capped.vel_bank.shape == (40, 2) and capped.app_bank.shape == (40, 32)
    uncapped = _model(**FIT)
    assert uncapped.fit(iter(stream))["banked"] == 128
    assert int(uncapped.background[0, 0]) == (BG + 255) // 2  # 157.5, truncated to uint8


def test_opencv_threads_are_set_once_per_process_not_per_call(monkeypatch):
    import cv2
    from vad.models import objects

    calls = []
    real = cv2.setNumThreads
    monkeypatch.setattr(cv2, "setNumThreads", lambda n: (calls.append(n), real(n)))
    objects._opencv_threads.cache_clear()
    model = _model()
    model.background.fill_(BG)
    for _ in range(3):  # task threads calling it in turn change nothing process-wide after the first
        model.objects(_clip(1.0))
    assert len(calls) == 1 and cv2.getNumThreads() == calls[0]


def test_footage_shorter_than_the_self_window_still_fits_a_distance_scale():
    # 40 normal objects over 40 frames at 10 fps (4 s), against a 15 s self-window: no object has 5 others
    # outside it, so the window falls back to a quarter of the footage (10 frames)
    model = _model(self_window_s=15.0, fps=10.0)
    z = torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    model._fit_density("vel", z, torch.arange(40))
    scale = float(model.vel_scale)
    assert np.isfinite(scale) and scale > 1e-6
    with pytest.raises(ParameterError, match="no normal object"):  # one frame of footage: nothing to compare
        _model(self_window_s=15.0, fps=10.0)._fit_density("vel", z[:6], torch.zeros(6, dtype=torch.long))


# ---------------------------------------------------------------- the declared variants' settings (issue 25)

def test_the_default_config_scores_as_before_the_variants():
    # frame scores of this fit and clips recorded with the module before the variant settings existed
    # (blur and close in px, no fit_max_s): the `{}` variant must reproduce them
    from vad.tasks.learning.fitting import torch_threads

    with torch_threads(1):
        model = _model(**FIT)
        model.fit(_normal_clips())
    x = torch.cat([_clip(1.0, x0=7.0, lane=1), _clip(3.0, x0=7.0, lane=1), _clip(2.0, x0=3.0, lane=3, present=5)])
    before = [0.5236, 0.1256, 0.2347, 0.1138, 0.0339, 0.2959, 0.4966, 0.0764, 42.1068, 45.1523, 41.0145, 45.0816,
              39.4746, 44.5076, 39.4308, 44.4943, 24.3802, 22.2474, 22.5172, 22.5148, 22.2549, 0.0, 0.0, 0.0]
    assert model.eval().score(x).frames.flatten().tolist() == pytest.approx(before, abs=2e-3)
    assert set(model.state_dict()) == {"background", "feature_mean", "objects_per_frame", "is_fitted",
                                       *(f"{g}_{p}" for g in GROUPS for p in ("mean", "std", "bank", "scale")),
                                       *(f"ae.{k}" for k in model.ae.state_dict())}


def test_variants_start_with_the_default_and_each_builds():
    from vad.models.objects import Objects

    assert list(Objects.VARIANTS)[0] == "default" and Objects.VARIANTS["default"] == {} and len(Objects.VARIANTS) <= 4
    for overrides in Objects.VARIANTS.values():
        _model(**overrides)


def test_blur_and_close_are_fractions_of_the_height_with_the_old_px_at_240_rows():
    from vad.models.objects import ObjectsConfig

    at240, at480 = ObjectsConfig(height=240), ObjectsConfig(height=480, width=640)
    assert (at240.blur, at240.close) == (5, 7)  # the Ped2 settings
    assert (at480.blur, at480.close) == (11, 15)  # 10 and 14 px: the nearest odd sizes
    old = ObjectsConfig.from_dict({"height": 120, "width": 160, "blur": 3, "close": 5})  # a checkpoint in px
    assert (old.blur_frac, old.close_frac, old.blur, old.close) == (3 / 120, 5 / 120, 3, 5)
    with pytest.raises(ParameterError, match="blur_frac"):
        _model(blur_frac=-0.1)


def _two_sizes(big: int, where: str, x0: int = 5, seed: int = 0) -> torch.Tensor:
    """(1, 1, T, H, W): a textured square of side `big` moving right at 1 px/frame from x0, its top edge
    at row 2 ("top") or row 62 - big ("bottom")."""
    x = np.full((T, H, W), BG, np.uint8)
    tex = _texture(big, seed)
    y0 = 2 if where == "top" else H - 2 - big
    for t in range(T):
        x[t, y0 : y0 + big, x0 + t : x0 + t + big] = tex
    return torch.from_numpy(x).float().div(255.0)[None, None]


def _perspective_clips() -> list[torch.Tensor]:
    """16 normal clips: 11-13 px squares high in the frame, 22-26 px ones low (a walker twice as tall near
    the camera; 3, 3 and 2 clips of each size), each clip with its own start and texture."""
    side = [11 + (i // 2) % 3 for i in range(16)]
    clips = [_two_sizes(side[i], "top", 4 + i, i) if i % 2 else _two_sizes(2 * side[i], "bottom", 4 + i, i) for i in range(16)]
    return [torch.cat(clips[i : i + 4]) for i in range(0, 16, 4)]


def test_a_walker_twice_as_tall_is_normal_low_in_the_frame_and_anomalous_high_with_position_norm():
    pos = _model(**FIT, position_norm=True, position_grid=2, position_min=5)
    pos.fit(_perspective_clips())
    # the blur adds 3 px to each box's height at this contrast (1 above the bottom ones, 2 below; 1 below
    # the top ones, cut by the frame's edge above): medians 12 + 3 in the top cell, 24 + 3 in the bottom one
    assert pos.cell_height[0, 0] == 15 and pos.cell_height[1, 0] == 27
    plain = _model(**FIT)
    plain.fit(_perspective_clips())
    x = torch.cat([_two_sizes(24, "bottom", 9, 99), _two_sizes(24, "top", 9, 99)])
    low, high = pos.eval().score(x).frames
    assert high.min() > 3 * low.max()  # 27 / 15 = 1.8 x the normal height there
    p_low, p_high = plain.eval().score(x).frames  # by size alone a 24 px square is normal anywhere
    assert p_high.max() < 2 * p_low.max() + 1


def test_a_noise_threshold_from_a_noisy_static_background():
    # left half flips between 60 - 16 and 60 + 16 every frame, right half is a flat 60: the median is 60,
    # the absolute deviation 16 on the left (threshold 5 x 1.4826 x 16 = 118.6), 0 on the right (the floor, 4)
    model = _model(noise_k=5.0, blur_frac=0.0)
    frames = np.full((10, H, W), BG, np.uint8)
    frames[0::2, :, : W // 2] = BG - 16
    frames[1::2, :, : W // 2] = BG + 16
    bg = np.median(frames, axis=0).astype(np.uint8)
    thresh = model._fit_threshold(frames, bg)
    assert thresh[:, : W // 2] == pytest.approx(5 * 1.4826 * 16) and np.all(thresh[:, W // 2 :] == 4.0)
    model.background.copy_(torch.from_numpy(bg))
    model.threshold.copy_(torch.from_numpy(thresh))
    x = frames[:T].copy()
    x[:, 20:32, 40:52] = BG + 30  # a 12 px square on the clean half
    clip = torch.from_numpy(x).float().div(255.0)[None, None]
    assert model.objects(clip)["box"].tolist() == [[40, 20, 12, 12]] * T  # the noise is no object
    plain = _model(blur_frac=0.0)
    plain.background.copy_(torch.from_numpy(bg))
    assert [32, 64] in plain.objects(clip)["box"][:, 2:].tolist()  # 16 levels > 10: the noisy half is one object


def test_a_brightness_step_is_no_foreground_with_the_light_following_background():
    from vad.models.objects import _match_light

    ramp = np.tile(np.linspace(40, 200, W).astype(np.uint8), (H, 1))  # a textured background
    lit = (ramp.astype(np.float32) * 1.2 + 5).round()
    assert _match_light(lit, ramp, 10.0) == pytest.approx(ramp * 1.2 + 5, abs=0.6)  # gain 1.2, offset 5
    x = np.full((T, H, W), BG + 20, np.uint8)  # the light went up by 20 levels
    x[:, 10:22, 20:32] = BG + 50  # a 12 px square 30 above the lit background
    clip = torch.from_numpy(x).float().div(255.0)[None, None]
    following, plain = _model(light_follow=True), _model()
    for m in (following, plain):
        m.background.fill_(BG)
    assert following.objects(clip)["box"].tolist() == [[20, 10, 12, 12]] * T
    assert plain.objects(clip)["box"].tolist() == [[0, 0, W, H]] * T  # the whole frame is 20 levels off


def test_direction_features_signed_flow_aspect_and_the_change_of_height():
    model = _model(direction=True)
    bg = np.full((H, W), BG, np.uint8)
    x = np.full((1, 3, H, W), BG, np.uint8)
    x[0, 0, 10:22, 20:32] = BG + 30  # 12 x 12, then 12 wide and 16, then 24 high: a flat box (no visible flow)
    x[0, 1, 10:26, 20:32] = BG + 30
    x[0, 2, 10:34, 20:32] = BG + 30
    m = model._detect(x, bg, 10.0).motion  # dx, dy, log(w / h), d log h / s, d log(w / h) / s at 10 fps
    assert m[:, 2] == pytest.approx(np.log([1.0, 12 / 16, 12 / 24]), abs=1e-6)
    assert m[:, 3] == pytest.approx([0.0, 10 * np.log(16 / 12), 10 * np.log(24 / 16)], abs=1e-5)
    assert m[:, 4] == pytest.approx(-m[:, 3], abs=1e-5)  # the width stays
    down = np.full((1, T, H, W), BG, np.uint8)
    tex = _texture()
    for t in range(T):
        down[0, t, 4 + 3 * t : 16 + 3 * t, 20:32] = tex  # 3 px/frame down
    m = model._detect(down, bg, 10.0).motion
    assert m[1:, 1].mean() == pytest.approx(3.0, abs=0.5) and abs(m[1:, 0].mean()) < 0.5


def test_a_fall_is_a_direction_the_direction_group_sees():
    # normal: the square walks right at 1 px/frame; the same square moving down at 1 px/frame has the
    # normal speed, size and look, and only the direction group (with every variant setting on) sees it
    full = _model(**FIT, **_variant("position+noise+direction"), position_grid=2, position_min=5)
    full.fit(_normal_clips())
    down = np.full((1, T, H, W), BG, np.uint8)
    for t in range(T):
        down[0, t, 20 + t : 32 + t, 30:42] = _texture()
    x = torch.cat([_clip(1.0, x0=7.0, lane=1), torch.from_numpy(down).float().div(255.0)[:, None]])
    walk, fall = full.eval().score(x).frames
    assert fall[1:].min() > walk.max()
    dist = full._distances(full._detect(_to_u8(x), full.background.numpy(), full._threshold()))  # (R, 4)
    assert dist.shape[1] == 4
    # saved and loaded, the extra state (threshold, cells, the direction bank) comes back
    fresh = _model(**FIT, **_variant("position+noise+direction"), position_grid=2, position_min=5)
    fresh.load_state_dict(full.state_dict())
    for other in (fresh.eval(), for_inference(full)):
        assert torch.equal(other.score(x).frames, full.score(x).frames)


def test_fit_max_s_detects_evenly_spaced_clips_of_the_footage():
    # 24 clips of 8 frames (19.2 s at 10 fps) with at most 5 s (50 frames) to detect in: the stride doubles
    # whenever the kept clips pass 50 frames (after batches 2 and 4), ending at every 4th clip (6 clips, 48 frames)
    model = _model(**FIT, fit_max_s=5.0)
    record = model.fit(_normal_clips())
    assert record["frames"] == 192 and record["frames_detected"] == 48 and record["clip_stride"] == 4
    assert record["objects"] == 48 == record["banked"]  # one object a frame
    again = _model(**FIT, fit_max_s=5.0)
    again.fit(_normal_clips())
    assert torch.equal(again.vel_bank, model.vel_bank)  # seeded


def _variant(name: str) -> dict:
    from vad.models.objects import Objects

    return Objects.VARIANTS[name]


def _to_u8(x: torch.Tensor) -> np.ndarray:
    from vad.models.objects import _to_uint8

    return _to_uint8(x)
