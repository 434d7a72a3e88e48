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

H = W = 64
T = 8
BG = 60  # flat background gray level
SIDE = 12
LANES = (4, 18, 32, 46)  # rows of the squares' top edges: each pixel is covered in far fewer than half the frames


def _model(**kw):
    """The model at H x W with the 10 px minimum box of the defaults at 240 rows."""
    return build("objects", clip_len=T, height=H, width=W, **{"min_box_frac": 10 / H, **kw}).eval()


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


def test_bad_settings_are_refused():
    with pytest.raises(ParameterError, match="gray input only"):
        _model(in_channels=3)
    with pytest.raises(ParameterError, match="blur"):
        _model(blur=4)
    with pytest.raises(ParameterError, match="flow_preset"):
        _model(flow_preset="slow")
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
