"""Contract suite every registered architecture passes: shapes, value range, determinism, gradients,
a checkpoint round trip, and refusal of a store whose preprocessing differs from the training store's."""

import numpy as np
import pytest
import torch
from vad.models import DEFAULT_ARCH, REGISTRY, build, make_config, trainable_parameters
from vad.storage import ClipStore
from vad.tasks.runtime.calibration import Calibration
from vad.tasks.runtime.checkpoint import (
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
    source_spec,
)
from vad.tasks.runtime.model_input import InputSpec

from vad.errors import (
    CheckpointError,
    CheckpointMismatchError,
    NotFoundError,
    ParameterError,
)

ARCHS = sorted(REGISTRY)
B, T, H, W = 2, 16, 32, 32


def _model(arch, channels=1):
    torch.manual_seed(0)
    return build(arch, in_channels=channels, clip_len=T, height=H, width=W)


def _clips(model, batch=B, seed=1):
    lo, hi = model.value_range
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(batch, model.config.in_channels, T, H, W, generator=g)


FITTED = [a for a in ARCHS if REGISTRY[a].fitted]  # no gradient training: `fit` sets their state
GRAY_ONLY = {a for a in ARCHS if REGISTRY[a].gray_only}  # read luma only: training feeds them gray


def test_registry_lists_every_design_and_role_defaults():
    assert ARCHS == ["ae3d", "forecaster", "motion_patch", "objects", "predictor", "resnet18_ae", "resnet3d_attn",
                     "topheavy", "vae3d"]
    assert FITTED == ["motion_patch", "objects"]
    assert GRAY_ONLY == {"motion_patch", "objects"}
    assert DEFAULT_ARCH == {"small": "motion_patch", "large": "objects"}
    assert {REGISTRY[a].role for a in ARCHS} == {"small", "large"}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shapes(arch, channels):
    if channels == 3 and arch in GRAY_ONLY:
        with pytest.raises(ParameterError, match="gray"):
            _model(arch, channels)
        return
    model = _model(arch, channels).eval()
    x = _clips(model)
    out = model(x)
    assert out.recon.shape == x.shape
    assert out.embedding.ndim == 2 and out.embedding.shape[0] == B
    errors = model.error_map(x, out.recon)
    assert errors.shape == (B, T, H, W)
    scores = model.score(x)
    assert scores.frames.shape == (B, T) and scores.clip.shape == (B,) and scores.uncertainty.shape == (B,)


@pytest.mark.parametrize("arch", ARCHS)
def test_reconstruction_stays_in_the_value_range(arch):
    model = _model(arch).eval()
    recon = model(_clips(model)).recon
    lo, hi = model.value_range
    assert recon.min() >= lo and recon.max() <= hi


@pytest.mark.parametrize("arch", ARCHS)
def test_scores_are_deterministic_in_eval_mode(arch):
    model = _model(arch).eval()
    x = _clips(model)
    a, b = model.score(x), model.score(x)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.embedding, b.embedding)
    # A clip's score does not depend on the other clips of its batch (batch norm uses running stats).
    alone = model.score(x[:1])
    assert torch.allclose(alone.frames, a.frames[:1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("arch", [a for a in ARCHS if getattr(make_config(a), "variational", False)])
def test_variational_models_sample_in_training_and_use_the_mean_in_eval(arch):
    model = _model(arch)
    x = _clips(model)
    model.train()
    torch.manual_seed(1)
    r1 = model(x).recon
    torch.manual_seed(2)
    r2 = model(x).recon
    assert not torch.equal(r1, r2)
    model.eval()
    out = model(x)
    assert out.kl is not None and out.kl >= 0
    assert out.uncertainty is not None and (out.uncertainty > 0).all()


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in FITTED])
def test_loss_reaches_every_parameter(arch):
    model = _model(arch).train()
    x = _clips(model, batch=3)
    loss, parts = model.loss(x, model(x))
    loss.backward()
    assert parts["mse"] > 0
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    assert trainable_parameters(model) == sum(p.numel() for p in model.parameters())


def test_frame_score_is_the_worst_patch_not_the_frame_mean():
    model = build("ae3d", clip_len=T, height=H, width=W, score_patch=16)
    errors = torch.zeros(1, T, H, W)
    errors[0, 2, :16, :16] = 1.0  # one 16x16 hot corner in frame 2: a quarter of the frame
    frames = model.frame_scores(errors)
    assert frames[0, 2] == pytest.approx(1.0)
    assert frames[0].sum() == pytest.approx(1.0)
    model.config.score_patch = 0  # whole-frame mean
    assert model.frame_scores(errors)[0, 2] == pytest.approx(0.25)


def test_bad_configs_are_refused_with_the_reason():
    with pytest.raises(ParameterError, match="height=40 must be a multiple of 16"):
        build("vae3d", height=40)
    with pytest.raises(ParameterError, match="unknown architecture 'unet'"):
        build("unet")
    with pytest.raises(ParameterError, match="no field"):
        build("topheavy", dropout=0.5)
    with pytest.raises(ParameterError, match="in_channels"):
        build("ae3d", in_channels=2)


def _calibration(seed=0):
    rng = np.random.default_rng(seed)
    return Calibration.fit(scores=rng.random(12), embeddings=rng.normal(size=(12, 4)), video_ids=["a"] * 6 + ["b"] * 6)


def _checkpoint(model, arch, frame_size=(H, W, 1), fps=25.0):
    return Checkpoint(
        arch=arch, role=model.role, model_config=model.config.to_dict(),
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        input=InputSpec(clip_len=T, stride=8, height=H, width=W, channels=model.config.in_channels),
        source={"frame_size": list(frame_size), "fps": fps, "preprocess": {}}, dataset="d", fingerprint="f" * 32,
        calibration=_calibration(),
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_round_trip_rebuilds_the_same_model(arch, tmp_path):
    model = _model(arch).eval()
    path = save_checkpoint(_checkpoint(model, arch), tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)  # nothing but tensors and plain containers
    assert raw["arch"] == arch
    loaded = load_checkpoint(path)
    rebuilt = loaded.build_model()
    assert not rebuilt.training
    x = _clips(model)
    assert torch.equal(rebuilt.score(x).frames, model.score(x).frames)
    assert loaded.calibration.threshold == pytest.approx(_calibration().threshold)
    assert loaded.input == InputSpec(clip_len=T, stride=8, height=H, width=W, channels=1)
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed, not left behind


def _video(tmp_path, size=(H, W, 1), fps=25.0, n=20):
    store = ClipStore.create(str(tmp_path / "other.zarr"), dataset="other")
    h, w, c = size
    writer = store.begin_video("cam1", height=h, width=w, channels=c, chunk_frames=16, attrs={"split": "test", "fps": fps})
    writer.append(np.zeros((n, h, w, c), np.uint8), np.zeros(n, bool))
    writer.finish(np.zeros(n, np.int8), {})
    return store.video("cam1")


def test_checkpoint_accepts_a_matching_video_and_refuses_mismatched_ones(tmp_path):
    model = _model("ae3d").eval()
    ckpt = _checkpoint(model, "ae3d", frame_size=(H, W, 1), fps=25.0)
    ckpt.check_video(_video(tmp_path / "ok"))
    with pytest.raises(CheckpointMismatchError, match=r"64x48 RGB.*32x32 gray.*--size 32x32 --gray"):
        ckpt.check_video(_video(tmp_path / "size", size=(64, 48, 3)))
    with pytest.raises(CheckpointMismatchError, match=r"30 fps.*25 fps"):
        ckpt.check_video(_video(tmp_path / "fps", fps=30.0))
    with pytest.raises(CheckpointMismatchError, match="fewer than one clip"):
        ckpt.check_video(_video(tmp_path / "short", n=10))
    assert source_spec(_video(tmp_path / "spec"))["frame_size"] == [H, W, 1]


def test_loading_a_missing_or_foreign_file_is_a_clear_error(tmp_path):
    with pytest.raises(NotFoundError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a video-anomaly-router checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
