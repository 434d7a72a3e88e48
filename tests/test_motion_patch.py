"""motion_patch: per-patch frame-difference energy against statistics fitted on normal clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vad.models import build
from vad.models.motion_patch import BINS, SPREAD_FLOOR
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


def _corner(amplitudes, corner=(slice(0, 4), slice(0, 4))):
    """(1, 1, 4, 8, 8) clips, one per amplitude a: the 4x4 `corner` flips between 0 and a every
    frame (energy a in its cell each frame), the rest is still."""
    out = []
    for a in amplitudes:
        x = _clip([0.0, 0.0, 0.0, 0.0])
        x[0, 0, 1::2, corner[0], corner[1]] = a
        out.append(x)
    return out


def test_z_judges_each_cell_against_its_own_normal_motion():
    model = _model(statistic="z", cell_prior=0.25)
    model.fit(_corner([0.4, 0.6]))  # the top-left cell always moves: 4 frames at 0.4, 4 at 0.6
    # cell (0, 0): mean 0.5, sample variance 8 * 0.1^2 / 7; its two half-overlapping neighbours at
    # half that energy, (1, 1) at a quarter; the five other cells never move
    v00 = 8 * 0.01 / 7
    mean_var = (v00 + 2 * v00 / 4 + v00 / 16) / 9
    assert model.cell_mean[0, 0] == pytest.approx(0.5) and model.cell_mean[2, 2] == 0
    assert model.cell_spread[0, 0] == pytest.approx((v00 + 0.25 * mean_var) ** 0.5, rel=1e-5)
    assert model.cell_spread[2, 2] == pytest.approx((0.25 * mean_var) ** 0.5, rel=1e-5)  # borrowed, not 0
    usual = _corner([0.5])[0]  # the corner at its normal energy
    odd = _corner([0.5], corner=(slice(4, 8), slice(4, 8)))[0]  # the same motion where nothing moves
    assert model.score(usual).frames[0].tolist() == pytest.approx([0.0] * 4, abs=1e-5)
    assert model.score(odd).frames[0].tolist() == pytest.approx([0.5 / (0.25 * mean_var) ** 0.5] * 4, rel=1e-5)
    raw = _model()
    raw.fit(_corner([0.4, 0.6]))
    assert raw.score(usual).frames[0].tolist() == pytest.approx([0.5] * 4) == raw.score(odd).frames[0].tolist()


def test_ratio_q_divides_by_the_cells_quantile_shrunk_to_the_average():
    model = _model(statistic="ratio_q", quantile=0.5, cell_prior=0.25)
    model.fit([_clip([0.0, 0.1, 0.2, 0.3])])  # every cell's energy 0.1: r = 0.1 + 0.25 * 0.1
    assert torch.allclose(model.cell_spread, torch.full((3, 3), 0.125), atol=BINS ** -1, rtol=0)
    faster = model.score(_clip([0.0, 0.3, 0.6, 0.9])).frames[0]
    assert faster.tolist() == pytest.approx([0.3 / 0.125] * 4, rel=0.01)
    dead = _model(statistic="ratio_q")
    dead.fit([_clip([0.5] * 4)])  # nothing moves on normal footage: the floor, not a division by 0
    assert torch.all(dead.cell_spread == SPREAD_FLOOR)


def test_variants_start_with_the_default_and_build():
    from vad.models.motion_patch import MotionPatch

    names = list(MotionPatch.VARIANTS)
    assert names[0] == "default" and MotionPatch.VARIANTS["default"] == {} and len(names) <= 4
    for overrides in MotionPatch.VARIANTS.values():
        _model(**overrides)


def test_a_checkpoint_without_the_spread_loads_with_ones():
    model = _model(statistic="minus_q")
    state = {k: v for k, v in model.state_dict().items() if k != "cell_spread"}
    fresh = _model(statistic="minus_q")
    fresh.load_state_dict(state)
    assert torch.equal(fresh.cell_spread, torch.ones(3, 3))


def test_a_bad_setting_is_refused():
    with pytest.raises(ParameterError, match="lag"):
        _model(lag=4)
    with pytest.raises(ParameterError, match="lag"):
        _model(lag_s=0.4)  # 4 frames at 10 fps: the clip has 4
    with pytest.raises(ParameterError, match="statistic"):
        _model(statistic="median")
    with pytest.raises(ParameterError, match="cell_prior"):
        _model(cell_prior=-1.0)


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


def _noise_store(path, channels=1):
    """A hand-made store (no FFmpeg): seeded noise with a bright square that walks right, 2 videos
    of 37 and 21 frames at 24x32, 16-frame chunks, 10 fps."""
    from vad.storage import ClipStore

    store = ClipStore.create(str(path), dataset="noise")
    rng = np.random.default_rng(0)
    for vid, n in (("a", 37), ("b", 21)):
        frames = rng.integers(0, 40, (n, 24, 32, channels), dtype=np.uint8)
        for t in range(n):
            frames[t, 8:16, t % 24 : t % 24 + 8] = 200
        w = store.begin_video(vid, height=24, width=32, channels=channels, chunk_frames=16,
                              attrs={"split": "test", "fps": 10.0})
        w.append(frames, np.zeros(n, dtype=bool))
        w.finish(np.zeros(n, dtype=np.int8), {})
    return str(path)


def _fitted_checkpoint(url, **kw):
    from vad.storage import ClipStore
    from vad.tasks.runtime.calibration import Calibration
    from vad.tasks.runtime.checkpoint import Checkpoint, source_spec
    from vad.tasks.runtime.model_input import InputSpec, prepare_clips

    model = build("motion_patch", clip_len=8, height=24, width=32, score_patch=8, **kw).eval()
    video = ClipStore.open(url).video("a")
    clip = torch.from_numpy(video.read(0, 32)).view(4, 8, 24, 32, -1)
    model.fit([prepare_clips(clip, InputSpec(8, 4, 24, 32, 1), (0.0, 1.0))])
    rng = np.random.default_rng(0)
    dim = model.score(torch.zeros(1, 1, 8, 24, 32)).embedding.shape[1]
    return Checkpoint(
        arch="motion_patch", role="small", model_config=model.config.to_dict(), state_dict=model.state_dict(),
        input=InputSpec(8, 4, 24, 32, 1), source=source_spec(video), dataset="noise", fingerprint="0" * 32,
        calibration=Calibration.fit(scores=rng.uniform(0, 0.05, 40), embeddings=rng.normal(size=(40, dim)),
                                    video_ids=["a"] * 20 + ["b"] * 20),
    )


# Scores of the pass over `_noise_store` recorded before the pass computed energies once per frame
# (clip by clip: each clip's frames read, converted and differenced on their own).
RECORDED_RAW = [0.12903645634651184, 0.13013941049575806, 0.12956495583057404]
RECORDED_FRAMES_0 = [0.13786765933036804, 0.13786765933036804, 0.12334559112787247]


@pytest.mark.parametrize("index", [
    [("a", s) for s in range(0, 30, 4)] + [("b", s) for s in range(0, 14, 4)],  # overlapping by half
    [("a", 0), ("a", 8), ("a", 16), ("b", 13)],  # touching, and a clip alone
    [("a", 20), ("a", 2), ("a", 3), ("b", 0)],  # out of order, overlapping by all but one frame
])
@pytest.mark.parametrize("channels", [1, 3])
def test_the_pass_scores_each_clip_as_the_model_does_alone(tmp_path, index, channels):
    from vad.tasks.runtime.compute import Compute
    from vad.tasks.runtime.passes import score_clips
    from vad.storage import ClipStore
    from vad.tasks.runtime.model_input import prepare_clips

    url = _noise_store(tmp_path / "noise.zarr", channels)
    ckpt = _fitted_checkpoint(url)
    got = score_clips(ckpt, url, index, compute=Compute(device="cpu", batch=3), workers=0)
    model, store = ckpt.build_model(), ClipStore.open(url)
    for i, (vid, start) in enumerate(index):
        clip = torch.from_numpy(store.video(vid).read(start, start + 8))[None]
        want = model.score(prepare_clips(clip, ckpt.input, (0.0, 1.0)))
        assert got.frame_errors[i] == pytest.approx(want.frames[0].numpy(), rel=1e-5, abs=1e-7)
        assert got.raw[i] == pytest.approx(float(want.clip[0]), rel=1e-5)
        assert got.embedding[i] == pytest.approx(want.embedding[0].numpy(), rel=1e-5, abs=1e-6)
        assert got.uncertainty[i] == pytest.approx(float(want.uncertainty[0]), rel=1e-5, abs=1e-7)
    if index[0] == ("a", 0) and len(index) == 12 and channels == 1:
        assert got.raw[:3].tolist() == pytest.approx(RECORDED_RAW, rel=1e-5)
        assert got.frame_errors[0, :3].tolist() == pytest.approx(RECORDED_FRAMES_0, rel=1e-5)


def test_the_luma_of_rgb_clips_is_the_weighted_sum_of_the_channels():
    from vad.tasks.runtime.model_input import InputSpec, prepare_clips

    rgb = torch.randint(0, 256, (2, 3, 4, 5, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    want = (rgb.float() / 255 * torch.tensor([0.299, 0.587, 0.114])).sum(dim=-1)  # (B, T, H, W)
    got = prepare_clips(rgb, InputSpec(3, 1, 4, 5, 1), (0.0, 1.0))
    assert got.shape == (2, 1, 3, 4, 5) and torch.allclose(got[:, 0], want, atol=1e-6, rtol=0)
    assert torch.equal(prepare_clips(rgb[..., :1], InputSpec(3, 1, 4, 5, 1), (0.0, 1.0))[:, 0], rgb[..., 0].float() / 255)


@pytest.mark.parametrize("channels,patch,lag", [(1, 8, 1), (3, 8, 1), (1, 5, 2), (3, 5, 2)])
def test_the_uint8_path_gives_the_energies_of_the_float_path(channels, patch, lag):
    from vad.tasks.runtime.model_input import InputSpec, prepare_clips

    model = build("motion_patch", clip_len=8, height=24, width=32, score_patch=patch, lag=lag).eval()
    frames = torch.randint(0, 256, (7, 24, 32, channels), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    want = model.frame_features(prepare_clips(frames[None], InputSpec(7, 1, 24, 32, 1), (0.0, 1.0)))
    got = model.stored_frame_features(frames.numpy())
    assert got.shape == want.shape == (7, *model.config.grid)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_read_spans_reads_each_frame_once_and_points_at_each_clip(tmp_path):
    from vad.storage import ClipStore
    from vad.tasks.runtime.model_input import read_spans

    video = ClipStore.open(_noise_store(tmp_path / "noise.zarr")).video("a")
    frames, offsets = read_spans(video, np.array([0, 4, 8, 25]), 8)  # [0, 16) and [25, 33)
    assert len(frames) == 16 + 8 and offsets.tolist() == [0, 4, 8, 16]
    for off, start in zip(offsets, [0, 4, 8, 25]):
        assert np.array_equal(frames[off : off + 8], video.read(start, start + 8))
