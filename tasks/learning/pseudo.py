"""Pseudo-anomalies made from normal training clips, and the auxiliary head that learns to tell them
apart from the clips they came from.

Three kinds, each applied in the model's input space (frames, or frame differences with `--motion`):
- `erase`: a random rectangle (1/8 to 1/3 of each side) is filled with uniform noise from a random
  frame to the end of the clip: something appears that the scene never shows;
- `shuffle`: the clip's frames in a random order (never the original one): motion that jumps;
- `jitter`: every frame after the first is shifted by up to 1/32 of the frame in each direction:
  the whole scene shakes.

With `TrainConfig.pseudo_weight` > 0, each training batch is paired with one pseudo-anomalous copy
per clip (kind drawn at random) and a linear head on the model's embedding is trained, with binary
cross-entropy, to say which clips are pseudo-anomalous; the weighted loss is added to the model's
own. The head shapes the encoder and its embedding (which the router's out-of-distribution signal
and the embedding-distance ensemble read); it is not part of the checkpoint, and scores stay the
model's own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("erase", "shuffle", "jitter")


def _uniform_int(lo: int, hi: int, gen: torch.Generator) -> int:
    """An integer in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (1,), generator=gen))


def erase(clip: torch.Tensor, gen: torch.Generator, value_range: tuple[float, float]) -> torch.Tensor:
    """(C, T, H, W) -> the clip with a noise rectangle from a random frame to the end."""
    c, t, h, w = clip.shape
    rh, rw = _uniform_int(max(1, h // 8), max(1, h // 3), gen), _uniform_int(max(1, w // 8), max(1, w // 3), gen)
    y, x, t0 = _uniform_int(0, h - rh, gen), _uniform_int(0, w - rw, gen), _uniform_int(0, t // 2, gen)
    lo, hi = value_range
    noise = lo + (hi - lo) * torch.rand(c, t - t0, rh, rw, generator=gen)
    out = clip.clone()
    out[:, t0:, y : y + rh, x : x + rw] = noise.to(clip.device, clip.dtype)
    return out


def shuffle(clip: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(C, T, H, W) -> the same frames in a random order other than the original."""
    t = clip.shape[1]
    order = torch.randperm(t, generator=gen)
    if torch.equal(order, torch.arange(t)):
        order = order.flip(0)
    return clip[:, order.to(clip.device)]


def jitter(clip: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(C, T, H, W) -> each frame after the first rolled by its own random (dy, dx), at least one nonzero."""
    _, t, h, w = clip.shape
    reach = max(1, h // 32), max(1, w // 32)
    out = clip.clone()
    for i in range(1, t):
        dy, dx = _uniform_int(-reach[0], reach[0], gen), _uniform_int(-reach[1], reach[1], gen)
        if dy == 0 and dx == 0:
            dx = reach[1]
        out[:, i] = clip[:, i].roll((dy, dx), dims=(1, 2))
    return out


def pseudo_anomalies(x: torch.Tensor, gen: torch.Generator, value_range: tuple[float, float]) -> tuple[torch.Tensor, list[str]]:
    """(B, C, T, H, W) -> one pseudo-anomalous copy of each clip, and the kind applied to each."""
    kinds = [KINDS[_uniform_int(0, len(KINDS) - 1, gen)] for _ in range(x.shape[0])]
    made = []
    for clip, kind in zip(x, kinds):
        if kind == "erase":
            made.append(erase(clip, gen, value_range))
        elif kind == "shuffle":
            made.append(shuffle(clip, gen))
        else:
            made.append(jitter(clip, gen))
    return torch.stack(made), kinds


class PseudoAnomalyHead(nn.Module):
    """A linear map from the model's embedding to the logit of 'pseudo-anomalous'."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, 1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B,)
        return self.linear(embedding.float()).squeeze(1)

    def loss(self, normal: torch.Tensor, pseudo: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Binary cross-entropy over normal (label 0) and pseudo-anomalous (label 1) embeddings, and
        the fraction of the two sets told apart at logit 0."""
        logits = torch.cat([self(normal), self(pseudo)])
        labels = torch.cat([torch.zeros(len(normal)), torch.ones(len(pseudo))]).to(logits.device)
        accuracy = float(((logits > 0).float() == labels).float().mean())
        return F.binary_cross_entropy_with_logits(logits, labels), accuracy
