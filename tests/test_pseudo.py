"""Pseudo-anomalies made from normal clips, and training with the auxiliary head that tells them apart."""

import pytest
import torch
from conftest import train_until_epoch_2
from vad.tasks.runtime.checkpoint import load_checkpoint
from vad.tasks.learning.pseudo import (
    KINDS,
    PseudoAnomalyHead,
    erase,
    jitter,
    pseudo_anomalies,
    shuffle,
)
from vad.tasks.learning.training import TrainConfig, train_model

from vad.errors import ParameterError

C, T, H, W = 1, 8, 32, 32


def _clip():
    # frame t holds the value t / 10 everywhere but a bright 4x4 square at (t, t)
    x = (torch.arange(T, dtype=torch.float32) / 10).view(1, T, 1, 1).expand(C, T, H, W).clone()
    for t in range(T):
        x[:, t, t : t + 4, t : t + 4] = 1.0
    return x


def test_erase_fills_one_rectangle_from_some_frame_to_the_end_with_noise_in_range():
    x = _clip()
    out = erase(x, torch.Generator().manual_seed(0), (-1.0, 1.0))
    changed = (out != x).any(dim=0)  # (T, H, W)
    frames = torch.nonzero(changed.any(dim=(1, 2))).flatten().tolist()
    assert frames == list(range(frames[0], T)) and frames[0] <= T // 2
    ys, xs = torch.nonzero(changed[-1], as_tuple=True)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert H // 8 <= ys.max() - ys.min() + 1 <= H // 3 and box >= 0.9 * len(ys)  # one filled rectangle
    assert out.min() >= -1 and out.max() <= 1


def test_shuffle_reorders_whole_frames_and_never_keeps_the_order():
    x = _clip()
    for seed in range(20):
        out = shuffle(x, torch.Generator().manual_seed(seed))
        order = [int(round(out[0, t, -1, -1].item() * 10)) for t in range(T)]  # a corner names the frame
        assert sorted(order) == list(range(T)) and order != list(range(T))
        assert all(torch.equal(out[:, i], x[:, o]) for i, o in enumerate(order))


def test_jitter_rolls_every_frame_but_the_first_by_a_small_nonzero_shift():
    x = torch.rand(C, T, H, W, generator=torch.Generator().manual_seed(1))
    out = jitter(x, torch.Generator().manual_seed(2))
    assert torch.equal(out[:, 0], x[:, 0])
    reach = range(-1, 2)  # 32 px frames: at most 32 // 32 = 1 px
    for t in range(1, T):
        shifts = [(dy, dx) for dy in reach for dx in reach if torch.equal(out[:, t], x[:, t].roll((dy, dx), dims=(1, 2)))]
        assert shifts and (0, 0) not in shifts


def test_a_batch_gets_one_seeded_kind_per_clip():
    x = torch.stack([_clip() for _ in range(12)])
    a, kinds = pseudo_anomalies(x, torch.Generator().manual_seed(3), (-1.0, 1.0))
    b, again = pseudo_anomalies(x, torch.Generator().manual_seed(3), (-1.0, 1.0))
    assert a.shape == x.shape and torch.equal(a, b) and kinds == again
    assert set(kinds) <= set(KINDS) and len(set(kinds)) > 1
    assert all(not torch.equal(a[i], x[i]) for i in range(len(x)))


def test_the_head_loss_is_log2_when_it_cannot_tell_and_counts_what_it_tells_apart():
    head = PseudoAnomalyHead(3)
    torch.nn.init.zeros_(head.linear.weight)
    torch.nn.init.zeros_(head.linear.bias)
    loss, _ = head.loss(torch.randn(4, 3), torch.randn(4, 3))
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    head.linear.weight.data[:] = torch.tensor([[1.0, 0.0, 0.0]])
    normal = torch.tensor([[-1.0, 0, 0], [-2.0, 0, 0]])
    pseudo = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]])  # the second is taken for normal
    _, accuracy = head.loss(normal, pseudo)
    assert accuracy == pytest.approx(3 / 4)


def test_training_with_the_head_learns_to_tell_pseudo_anomalies_apart_and_keeps_it_out_of_the_checkpoint(synthetic_store, tmp_path):
    # training clips 8 frames apart (85, not 170), for the suite's time: head accuracy 0.556, 0.756,
    # 0.963 over the epochs (0.685, 0.955, 0.994 with clips 4 apart; measured, one torch thread)
    base = dict(role="small", arch="vae3d", epochs=3, batch=8, size=(32, 32), train_stride=8, workers=0)
    # the plain model is only compared by its keys and its history's fields: one epoch shows both
    plain = train_model(synthetic_store, tmp_path / "plain.pt", TrainConfig(**{**base, "epochs": 1}))
    result = train_model(synthetic_store, tmp_path / "pseudo.pt", TrainConfig(**base, pseudo_weight=0.5))
    ckpt = load_checkpoint(result.checkpoint)
    history = ckpt.training["history"]
    assert ckpt.training["config"]["pseudo_weight"] == 0.5
    assert history[-1]["pseudo_accuracy"] > 0.8 and history[-1]["pseudo_accuracy"] > history[0]["pseudo_accuracy"]
    assert set(ckpt.state_dict) == set(load_checkpoint(plain.checkpoint).state_dict)  # no head weights
    assert "pseudo_accuracy" not in load_checkpoint(plain.checkpoint).training["history"][0]


def test_a_negative_weight_is_refused():
    with pytest.raises(ParameterError, match="pseudo_weight"):
        TrainConfig(pseudo_weight=-0.1)


def test_a_resumed_pseudo_anomaly_run_ends_with_the_uninterrupted_weights(synthetic_store, tmp_path):
    # clips 16 frames apart (45 training clips): the weights are equal or not whatever the clip count
    config = TrainConfig(role="small", arch="vae3d", epochs=3, batch=8, size=(32, 32), stride=16, train_stride=16,
                         workers=0, pseudo_weight=0.5)
    whole = train_model(synthetic_store, tmp_path / "whole.pt", config)
    train_until_epoch_2(synthetic_store, tmp_path / "cut.pt", config)
    resumed = train_model(synthetic_store, tmp_path / "cut.pt", config)
    assert resumed.resumed_from == 1
    # equal only if the head, its optimiser state and the per-epoch pseudo-anomaly seeds come back
    a, b = load_checkpoint(whole.checkpoint), load_checkpoint(resumed.checkpoint)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert [h["pseudo_accuracy"] for h in a.training["history"]] == [h["pseudo_accuracy"] for h in b.training["history"]]
