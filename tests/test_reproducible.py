"""The same training, run twice, gives the same checkpoint bit for bit and the same scores: the
figures a user gets from the README's commands depend on the package versions alone."""

import numpy as np
import torch
from vad.storage import ClipStore
from vad.tasks.runtime.passes import score_clips
from vad.tasks.runtime.checkpoint import load_checkpoint
from vad.tasks.runtime.model_input import clip_index
from vad.tasks.learning.training import TrainConfig, train_model


def test_training_twice_gives_bit_identical_checkpoints_and_scores(synthetic_store, tmp_path):
    # A small run that still goes through what the CLI's does: the default small model (a VAE, whose
    # training draws noise), two epochs, a DataLoader worker process, flips, the held-out split and
    # the calibration; clips 16 frames apart keep it to 45 training clips.
    config = TrainConfig(role="small", arch="vae3d", epochs=2, batch=8, size=(32, 32), stride=16, train_stride=16, workers=1)
    first = load_checkpoint(train_model(synthetic_store, tmp_path / "a.pt", config).checkpoint)
    second = load_checkpoint(train_model(synthetic_store, tmp_path / "b.pt", config).checkpoint)

    assert first.state_dict.keys() == second.state_dict.keys()
    for name, tensor in first.state_dict.items():
        assert torch.equal(tensor, second.state_dict[name]), name
    a, b = first.calibration, second.calibration
    assert np.array_equal(a.scores.sorted_values, b.scores.sorted_values) and a.threshold == b.threshold
    assert np.array_equal(a.centroid, b.centroid) and np.array_equal(a.ood.sorted_values, b.ood.sorted_values)
    assert first.training["best_val_loss"] == second.training["best_val_loss"]

    store = ClipStore.open(synthetic_store)
    index = clip_index(store, store.video_ids(split="test"), config.clip_len, config.stride)
    one, two = score_clips(first, synthetic_store, index), score_clips(second, synthetic_store, index)
    assert len(one.raw) == len(index) > 0
    assert np.array_equal(one.raw, two.raw) and np.array_equal(one.frame_errors, two.frame_errors)
    assert np.array_equal(a.calibrate(one.raw), b.calibrate(two.raw))
