"""Training on normal clips: the held-out split, learning that separates anomalies, resuming, refusals."""

import numpy as np
import pytest
import torch
from conftest import train_until_epoch_2
from sklearn.metrics import roc_auc_score
from vad.models import REGISTRY
from vad.storage import ClipStore
from vad.tasks.runtime.passes import score_clips
from vad.tasks.runtime.checkpoint import load_checkpoint
from vad.tasks.runtime.model_input import clip_index
from vad.tasks.learning.training import (
    TrainConfig,
    parse_model_options,
    plan_training,
    split_clips,
    train_model,
)
from vad.tasks.sources.synthetic import ANOMALY_KINDS

from vad.errors import ParameterError, PipelineError, StoreNotFoundError

SIZE = (32, 32)


def _config(arch="vae3d", **kw):
    base = dict(role=REGISTRY[arch].role, arch=arch, epochs=5, batch=8, size=SIZE, workers=0, patience=10)
    return TrainConfig(**{**base, **kw})


def test_whole_videos_are_held_out(synthetic_store):
    videos = list(ClipStore.open(synthetic_store).videos(split="train"))
    split = split_clips(videos, _config(stride=8))
    assert len(split.val_videos) == 1 and len(split.train_videos) == 5  # round(0.2 * 6) videos held out
    assert not {v for v, _ in split.train} & {v for v, _ in split.val}
    # 150 frames, clips of 16: training at stride 4 gives floor(134 / 4) + 1 = 34 clips a video,
    # held-out clips at the scoring stride 8 give floor(134 / 8) + 1 = 17
    assert len(split.train) == 5 * 34 and len(split.val) == 17
    assert split_clips(videos, _config(stride=8)).val_videos == split.val_videos  # seeded
    assert split_clips(videos, _config(stride=8, seed=3)).val_videos != split.val_videos


def test_a_lone_video_is_split_in_time(tmp_path):
    store = ClipStore.create(str(tmp_path / "one.zarr"), dataset="one")
    w = store.begin_video("cam", height=4, width=4, channels=1, chunk_frames=16, attrs={"split": "train"})
    w.append(np.zeros((100, 4, 4, 1), np.uint8), np.zeros(100, bool))
    w.finish(np.zeros(100, np.int8), {})
    split = split_clips([store.video("cam")], _config(stride=8))
    # frames [0, 80) train, [80, 100) held out: no held-out clip overlaps a training clip
    assert max(s for _, s in split.train) + 16 <= 80 and min(s for _, s in split.val) >= 80
    assert split.val == [("cam", 80)]


def _test_scores(store_url, checkpoint):
    store = ClipStore.open(store_url)
    index = clip_index(store, store.video_ids(split="test"), checkpoint.input.clip_len, checkpoint.input.stride)
    raw = score_clips(checkpoint, store_url, index).raw
    labels = [store.video(v).labels[s : s + checkpoint.input.clip_len] for v, s in index]
    anomalous = np.array([lab.max() == 1 for lab in labels])
    inside = np.array([lab.min() == 1 for lab in labels])
    # test video i shows ANOMALY_KINDS[i % 3] (tasks/sources/synthetic.py)
    kinds = np.array([ANOMALY_KINDS[int(v.rsplit("_", 1)[1]) % len(ANOMALY_KINDS)] for v, _ in index])
    return checkpoint.calibration.calibrate(raw), anomalous, inside, kinds


# Settings besides the defaults, for the suite's time. resnet18_ae: narrower, and pixel error only,
# because from scratch, at 32x32 and after 5 epochs, its feature-consistency term ranks the foreign
# shape below normal frames (clip AUC 0.52 on those videos with it, 0.75 without, measured);
# tests/test_frame_models.py checks the feature term itself. forecaster and resnet3d_attn: half
# width, the same layers (on the suite's two workers, one torch thread each: forecaster 51 s -> 25 s,
# clip AUC 0.793, gap 0.456; resnet3d_attn 33 s -> 11 s, clip AUC 0.797, gap 0.473; measured).
# predictor: half width too (one torch thread: 11.1 -> 6.3 s of CPU, clip AUC 0.892 -> 0.896, gap
# 0.638 -> 0.653; measured).
_TEST_WIDTHS = {"resnet18_ae": {"base_channels": 16, "feature_weight": 0.0},
                "forecaster": {"channels": [8, 16, 32]},
                "predictor": {"channels": [4, 8, 16, 32]},
                "resnet3d_attn": {"channels": [8, 16, 32, 64, 128, 128], "latent": 256}}
# Training clips 8 frames apart instead of 4 (85 clips, not 170) where the margins hold, which halves
# the epochs (one torch thread, clip AUC and gap at 4 -> 8 apart, measured): ae3d 0.813/0.482 ->
# 0.795/0.497, topheavy 0.800/0.503 -> 0.805/0.479, vae3d 0.802/0.487 -> 0.795/0.491. Not for
# resnet3d_attn (0.698) or forecaster (0.602), nor predictor, whose half width is the saving.
_TEST_TRAIN_STRIDE = {"ae3d": 8, "topheavy": 8, "vae3d": 8}
# forecaster: 8 epochs. With the pinned versions (constraints.txt) 5 epochs leave it at clip AUC
# 0.700 on these videos (full width), at the last commit before this change too; 8 give 0.831.
_TEST_EPOCHS = {"forecaster": 8}


@pytest.mark.parametrize("arch", [a for a in sorted(REGISTRY) if not REGISTRY[a].fitted])  # fitted: own tests
def test_short_training_scores_synthetic_anomalies_above_normal_clips(arch, synthetic_store, tmp_path):
    workers = 1 if arch == "vae3d" else 0  # one run goes through a spawned worker process
    epochs = _TEST_EPOCHS.get(arch, 5)
    result = train_model(synthetic_store, tmp_path / "m.pt",
                         _config(arch, workers=workers, epochs=epochs, model=_TEST_WIDTHS.get(arch, {}),
                                 train_stride=_TEST_TRAIN_STRIDE.get(arch)))
    ckpt = load_checkpoint(result.checkpoint)
    assert result.epochs_run == epochs and ckpt.training["workers"] == workers
    assert ckpt.training["val_videos"] and not set(ckpt.training["val_videos"]) & set(ckpt.training["train_videos"])
    cal, anomalous, inside, kinds = _test_scores(synthetic_store, ckpt)
    if REGISTRY[arch].appearance_only:
        # A single-frame model cannot see an object moving too fast or against the flow (they look
        # like the normal squares); it is held to the foreign shape.
        seen = kinds == "foreign_shape"
        cal, anomalous, inside = cal[seen], anomalous[seen], inside[seen]
    auc = roc_auc_score(anomalous, cal)
    gap = cal[inside].mean() - cal[~anomalous].mean()
    print(f"{arch}: clip AUC {auc:.3f}, calibrated gap {gap:.3f}")
    assert auc > 0.7
    assert gap > 0.25  # clips wholly inside an anomaly rank well above clean clips


def test_resuming_after_an_interruption_gives_the_uninterrupted_weights(synthetic_store, tmp_path):
    # a worker process, as the CLI trains; clips 16 frames apart (45 training clips) keep it short
    config = _config("vae3d", epochs=3, workers=1, stride=16, train_stride=16)
    whole = train_model(synthetic_store, tmp_path / "whole.pt", config)
    train_until_epoch_2(synthetic_store, tmp_path / "cut.pt", config)
    assert (tmp_path / "cut.pt.state").exists() and not (tmp_path / "cut.pt").exists()
    messages = []
    resumed = train_model(synthetic_store, tmp_path / "cut.pt", config, log=messages.append)
    assert resumed.resumed_from == 1 and any(m.startswith("resuming") for m in messages)
    assert not (tmp_path / "cut.pt.state").exists()
    a, b = load_checkpoint(whole.checkpoint).state_dict, load_checkpoint(resumed.checkpoint).state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_existing_checkpoint_and_bad_settings_are_refused(synthetic_store, tmp_path):
    target = tmp_path / "m.pt"
    target.write_bytes(b"precious")
    with pytest.raises(ParameterError, match="already exists"):
        train_model(synthetic_store, target, _config())
    assert target.read_bytes() == b"precious"
    with pytest.raises(ParameterError, match="multiple of 32"):
        plan_training(synthetic_store, tmp_path / "x.pt", _config("resnet3d_attn", size=(48, 48)))
    with pytest.raises(ParameterError, match="role"):
        TrainConfig(role="medium")
    for bad in (dict(batch=1), dict(seed=-1), dict(lr=float("nan"))):
        with pytest.raises(ParameterError):
            _config(**bad)
    # held-out videos of 150 frames give 4 clips of 16 at stride 40, but not at stride 48
    plan_training(synthetic_store, tmp_path / "x.pt", _config(stride=40))
    with pytest.raises(PipelineError, match="at least 4 clips"):
        plan_training(synthetic_store, tmp_path / "x.pt", _config(stride=48))
    with pytest.raises(StoreNotFoundError):
        plan_training(str(tmp_path / "missing.zarr"), tmp_path / "x.pt", _config())
    empty = ClipStore.create(str(tmp_path / "empty.zarr"), dataset="empty")
    with pytest.raises(PipelineError, match="no complete training videos"):
        plan_training(empty.url, tmp_path / "x.pt", _config())


def test_cli_train_reports_a_missing_store_in_one_line(tmp_path, vad_main):
    code, _, err = vad_main("train", "--dataset", "nope", "--root", str(tmp_path))  # the script itself: tests/test_cli.py
    assert code == 2
    assert err.startswith("error: ") and "nope.zarr" in err and "Traceback" not in err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_with_mixed_precision_gives_a_checkpoint_cpu_can_use(synthetic_store, tmp_path):
    result = train_model(synthetic_store, tmp_path / "g.pt", _config("topheavy", epochs=1, device="cuda"))
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.training["device"].startswith("cuda")
    cal, anomalous, _, _ = _test_scores(synthetic_store, ckpt)  # scored on CPU from the CUDA-trained weights
    assert np.isfinite(cal).all() and cal.shape == anomalous.shape


def test_an_interrupt_during_a_run_becomes_one_resume_hint(tmp_path):
    import os
    import signal

    from vad.flows.cli import Interrupted, _interruptible

    # Whatever error the interrupted run raises on its way out (Prefect reports a crash and can fail
    # to reach its stopped server), the user gets the hint. The handler in place before (Python's
    # default, or "ignore" in a process started in the background) comes back afterwards.
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted, match="run the same command to resume"):
        with _interruptible("interrupted; run the same command to resume"):
            try:
                os.kill(os.getpid(), signal.SIGINT)
            except KeyboardInterrupt:
                raise ConnectionError("server gone") from None
    assert signal.getsignal(signal.SIGINT) is before  # restored
    with pytest.raises(ValueError):  # other errors pass through untouched
        with _interruptible("unused"):
            raise ValueError("not an interrupt")


def test_architecture_settings_parse_and_are_checked_against_the_architecture():
    assert parse_model_options(["channels=16,32,64", "step=4", "gradient_weight=0.5"], "predictor") == {
        "channels": [16, 32, 64], "step": 4, "gradient_weight": 0.5,
    }
    assert parse_model_options(["variational=false"], "vae3d") == {"variational": False}
    assert parse_model_options(None, "vae3d") == {}
    with pytest.raises(ParameterError, match=r"vae3d has no setting\(s\) \['step'\]; its settings: score_patch, channels, latent"):
        parse_model_options(["step=4"], "vae3d")  # a predictor setting given to vae3d
    with pytest.raises(ParameterError, match="step must be >= 1"):
        parse_model_options(["step=0"], "predictor")
    with pytest.raises(ParameterError, match="KEY=VALUE"):
        parse_model_options(["step"], "predictor")
    with pytest.raises(ParameterError, match="--size"):
        parse_model_options(["height=64"], "predictor")


def test_architecture_settings_reach_the_checkpoint(synthetic_store, tmp_path):
    config = _config("predictor", epochs=1, model=parse_model_options(["channels=4,8", "step=4"], "predictor"))
    ckpt = load_checkpoint(train_model(synthetic_store, tmp_path / "p.pt", config).checkpoint)
    assert ckpt.model_config["channels"] == [4, 8]  # stored as JSON-like lists
    model = ckpt.build_model()
    assert model.config.channels == (4, 8) and model.config.step == 4 and model.targets().tolist() == [4, 8, 12]
    assert ckpt.training["config"]["model"] == {"channels": [4, 8], "step": 4}


@pytest.mark.parametrize("args, message", [
    (["--arch", "predictor", "--set", "step=0"], "step must be >= 1"),
    (["--pseudo", "-0.5"], "pseudo_weight must be a finite number >= 0"),
    (["--flow", "--gray"], "optical-flow input has 3 channels (x, y, speed); it cannot be gray"),
    (["--flow", "--motion"], "frame differences (motion) or optical flow, not both"),
    (["--distill-weight", "0"], "distill_weight must be a finite number > 0"),
])
def test_cli_train_refuses_a_bad_setting_in_one_line(args, message, tmp_path, vad_main):
    code, _, err = vad_main("train", "--dataset", "nope", *args, "--root", str(tmp_path))
    assert code == 2
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1 and "Traceback" not in err
