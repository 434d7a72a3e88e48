"""What a fit and its calibration see: only the split's training part is fitted, the held-out part
calibrates, frame scores get a calibration of their own, and gray-only models train on colour stores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vad.models import MotionPatch
from vad.storage import ClipStore
from vad.tasks.runtime.passes import score_clips
from vad.tasks.inference.routing import BatchBudget
from vad.tasks.inference.scoring import aggregate_frames, score_videos
from vad.tasks.runtime.calibration import Calibration
from vad.tasks.runtime.checkpoint import load_checkpoint
from vad.tasks.learning.training import TrainConfig, plan_training, split_clips, train_model
from vad.tasks.sources.datasets import discover
from vad.tasks.sources.ingest import Preprocess, ingest_video


def _ramp_store(tmp_path, n=100):
    """One gray 16x16 training video whose frame i is flat at gray level i."""
    store = ClipStore.create(str(tmp_path / "one.zarr"), dataset="one")
    w = store.begin_video("cam", height=16, width=16, channels=1, chunk_frames=4, attrs={"split": "train", "fps": 10.0})
    w.append(np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 16, 16, 1)).copy(), np.zeros(n, bool))
    w.finish(np.zeros(n, np.int8), {})
    return store.url


def test_a_fitted_model_fits_a_lone_video_without_its_held_out_tail(tmp_path, monkeypatch):
    url = _ramp_store(tmp_path)
    seen = []
    fit = MotionPatch.fit

    def spy(self, clips):
        def recorded():
            for x in clips:
                seen.append(x)
                yield x
        return fit(self, recorded())

    monkeypatch.setattr(MotionPatch, "fit", spy)
    config = TrainConfig(role="small", arch="motion_patch", clip_len=4, stride=2, window=2, batch=2, workers=0,
                         calibration_folds=1)  # the held-out split (out of fold: tests/test_calibration_folds.py)
    result = train_model(url, tmp_path / "m.pt", config)
    # 100 frames, val_fraction 0.2: frames [0, 80) train, [80, 100) calibrate. The fit sees frames
    # 0..79 once each (20 clips of 4 side by side); frame i is gray level i, i / 255 as model input.
    levels = np.round(np.concatenate([x.numpy().ravel() for x in seen]) * 255)
    assert levels.max() == 79 and np.unique(levels).tolist() == list(range(80))
    assert result.train_clips == 20
    # the held-out tail calibrates: clips at stride 2 from frame 80, floor((20 - 4) / 2) + 1 = 9
    assert result.val_clips == 9 and load_checkpoint(result.checkpoint).calibration.scores.n == 9


def test_a_fit_runs_on_one_torch_thread_whatever_the_cores(tmp_path, monkeypatch):
    # a fit's float sums (the default large model's crop autoencoder) must not depend on the core count
    monkeypatch.setenv("VAD_TORCH_THREADS", "2")
    threads = []
    fit = MotionPatch.fit
    monkeypatch.setattr(MotionPatch, "fit", lambda self, clips: threads.append(torch.get_num_threads()) or fit(self, clips))
    train_model(_ramp_store(tmp_path), tmp_path / "m.pt", TrainConfig(arch="motion_patch", clip_len=4, stride=2, window=2, workers=0))
    assert threads == [1, 1, 1] and torch.get_num_threads() == 2  # the final fit and 2 fold fits; restored after


def test_split_records_the_training_part_of_each_video(tmp_path):
    store = ClipStore.open(_ramp_store(tmp_path))
    split = split_clips(list(store.videos(split="train")), TrainConfig(arch="motion_patch", clip_len=4, stride=2))
    assert split.train_frames == {"cam": 80}
    assert split.fit_index(4) == [("cam", s) for s in range(0, 80, 4)]


def test_frame_scores_have_their_own_calibration():
    # clip scores 10..190 (19), frame scores 1..99 (99): a raw 50 is a middling frame but a low clip
    cal = Calibration.fit(scores=np.arange(1, 20) * 10.0, embeddings=np.eye(19), video_ids=["a"] * 19, window=2,
                          frame_scores=np.arange(1, 100, dtype=float).reshape(33, 3))
    assert cal.calibrate_frames([50.0]).tolist() == [0.5]  # rank 50 / (99 + 1)
    assert cal.calibrate([50.0]).tolist() == [0.25]  # the 5th of 19 clip scores: rank 5 / 20
    back = Calibration.from_state(cal.to_state())
    assert back.frames is not None and np.array_equal(back.frames.sorted_values, cal.frames.sorted_values)


def test_trained_checkpoints_calibrate_frame_mode_on_held_out_frame_scores(synthetic_store, tmp_path):
    config = TrainConfig(role="small", arch="motion_patch", workers=0, calibration_folds=1)
    ckpt = load_checkpoint(train_model(synthetic_store, tmp_path / "m.pt", config).checkpoint)
    held_out = split_clips(list(ClipStore.open(synthetic_store).videos(split="train")), config).val
    frames = score_clips(ckpt, synthetic_store, held_out).frame_errors
    # 17 held-out clips of 16 frames: 272 per-frame scores, the clips' own
    assert ckpt.calibration.frames.n == 17 * 16
    assert np.array_equal(ckpt.calibration.frames.sorted_values, np.sort(frames.ravel().astype(np.float64)))
    video = ClipStore.open(synthetic_store).video_ids(split="test")[0]
    result = score_videos(synthetic_store, ckpt, None, BatchBudget(0.0), videos=[video], frame_mode="frame")
    starts = result.clips.start_frame.to_numpy()
    want = aggregate_frames(150, starts, 16, ckpt.calibration.calibrate_frames(result.small.frame_errors))
    assert np.allclose(result.frames.small_score, want)
    clip_level = aggregate_frames(150, starts, 16, ckpt.calibration.calibrate(result.small.frame_errors))
    assert not np.allclose(result.frames.small_score, clip_level)


@pytest.fixture(scope="module")
def rgb_store(tiny_dataset, tmp_path_factory):
    """The tiny synthetic dataset stored in colour at 48x64."""
    url = str(tmp_path_factory.mktemp("rgb") / "tiny.zarr")
    for source in discover(str(tiny_dataset), "folder"):
        ingest_video(url, source, Preprocess(), dataset="tiny")
    return url


def test_the_default_small_model_trains_on_a_colour_store_without_gray(rgb_store, tmp_path):
    assert {v.frames.shape[-1] for v in ClipStore.open(rgb_store).videos()} == {3}
    result = train_model(rgb_store, tmp_path / "small.pt", TrainConfig(role="small", workers=0))
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.arch == "motion_patch" and ckpt.input.channels == 1  # the luma of the colour frames
    assert ckpt.source["frame_size"] == [48, 64, 3]  # what it reads: the colour store as stored
    scored = score_videos(rgb_store, ckpt, None, BatchBudget(0.0))
    assert len(scored.frames) == 2 * 40 and np.isfinite(scored.frames.score).all()
    # the default large model is gray-only too; a model that reads colour keeps it
    assert plan_training(rgb_store, tmp_path / "large.pt", TrainConfig(role="large")).spec.channels == 1
    assert plan_training(rgb_store, tmp_path / "v.pt", TrainConfig(arch="vae3d", size=(32, 32))).spec.channels == 3
    assert plan_training(rgb_store, tmp_path / "g.pt", TrainConfig(arch="vae3d", size=(32, 32), channels=1)).spec.channels == 1
