"""`predictor`, a future-frame prediction network: each frame is predicted from the `context` frames
before it, and the anomaly score is the prediction error.

A 2D U-Net (two 3x3 convolutions with batch norm and ReLU per level, max-pooling down, bilinear
upsampling and skip connections up) takes the `context` previous frames stacked as channels and
predicts the change from the last of them to the next frame. Normal movement (people walking at
their pace) is predictable from normal footage; something that moves unlike it (a cyclist, a cart)
or looks unlike anything seen lands away from the prediction. Appearance and motion both count, so
the model complements the motion-input autoencoders.

Inside a clip of T frames, frames `context`, `context + step`, ... are predicted; the others are
returned unchanged (zero error) and take, for scoring, the score of the nearest predicted frame.
A step of 2 halves the cost; with the scoring stride a multiple of it, the frames a video's clips
predict are every other frame, and the frames between take their neighbour's score. The
training loss is the squared error of the predicted frames plus `gradient_weight` times the
gradient-difference loss (L1 between the image gradients of prediction and target), which keeps
predictions sharp, as in future-frame prediction work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from vad.models._base import (
    ClipConfig,
    ClipModel,
    ClipScores,
    ModelOutput,
    check_divisible,
    fill_nearest,
)

from vad.errors import ParameterError


@dataclass
class PredictorConfig(ClipConfig):
    channels: tuple[int, ...] = (8, 16, 32, 64)  # U-Net widths, one per level
    context: int = 4  # frames the prediction sees
    step: int = 2  # predict every step-th frame after the context
    gradient_weight: float = 1.0

    def validate(self) -> None:
        super().validate()
        if len(self.channels) < 2 or min(self.channels) < 1:
            raise ParameterError(f"predictor: channels must be at least 2 positive widths, got {self.channels}")
        if not 1 <= self.context < self.clip_len:
            raise ParameterError(f"predictor: context must be in [1, clip_len), got {self.context} with clip_len {self.clip_len}")
        if self.step < 1:
            raise ParameterError(f"predictor: step must be >= 1, got {self.step}")
        if self.gradient_weight < 0:
            raise ParameterError(f"predictor: gradient_weight must be >= 0, got {self.gradient_weight}")
        levels = len(self.channels) - 1
        check_divisible(self, ((1, 2, 2),) * levels, "predictor")


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (x[..., :, 1:] - x[..., :, :-1]).abs(), (x[..., 1:, :] - x[..., :-1, :]).abs()


class Predictor(ClipModel):
    arch = "predictor"
    role = "large"
    config_class = PredictorConfig

    def __init__(self, config: PredictorConfig) -> None:
        super().__init__(config)
        c, k = config.channels, config.context
        self.down = nn.ModuleList([_block(config.in_channels * k, c[0])] + [_block(c[i], c[i + 1]) for i in range(len(c) - 1)])
        self.up = nn.ModuleList([_block(c[i + 1] + c[i], c[i]) for i in reversed(range(len(c) - 1))])
        self.head = nn.Conv2d(c[0], config.in_channels, 1)

    def targets(self) -> torch.Tensor:
        """Indices of the predicted frames within a clip."""
        return torch.arange(self.config.context, self.config.clip_len, self.config.step)

    def windows(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B * P, C * k, H, W): the k frames before each of the P predicted frames."""
        b, c, t, h, w = x.shape
        k = self.config.context
        starts = (self.targets() - k).tolist()
        win = torch.stack([x[:, :, s : s + k] for s in starts], dim=1)  # (B, P, C, k, H, W)
        return win.reshape(b * len(starts), c * k, h, w)

    def forward(self, x: torch.Tensor) -> ModelOutput:  # (B, C, T, H, W) -> recon (B, C, T, H, W), embedding (B, c[-1])
        b, c, t, h, w = x.shape
        targets = self.targets()
        p = len(targets)
        z = self.windows(x)
        skips = []
        for i, block in enumerate(self.down):
            z = block(z if i == 0 else F.max_pool2d(z, 2))
            skips.append(z)
        embedding = z.mean(dim=(2, 3)).reshape(b, p, -1).mean(dim=1)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            z = block(torch.cat([F.interpolate(z, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], dim=1))
        last = x[:, :, targets - 1].transpose(1, 2).reshape(b * p, c, h, w)  # the frame before each target
        lo, hi = self.value_range
        pred = (last + self.head(z).to(last.dtype)).clamp(lo, hi).reshape(b, p, c, h, w).transpose(1, 2)
        recon = x.clone()
        recon[:, :, targets] = pred
        return ModelOutput(recon=recon, embedding=embedding)

    def loss(self, x: torch.Tensor, out: ModelOutput) -> tuple[torch.Tensor, dict[str, float]]:
        targets = self.targets()
        pred, target = out.recon[:, :, targets].float(), x[:, :, targets].float()
        mse = F.mse_loss(pred, target)
        (pgx, pgy), (tgx, tgy) = _gradients(pred), _gradients(target)
        grad = (pgx - tgx).abs().mean() + (pgy - tgy).abs().mean()
        return mse + self.config.gradient_weight * grad, {"mse": float(mse.detach()), "gradient": float(grad.detach())}

    @torch.inference_mode()
    def score(self, x: torch.Tensor) -> ClipScores:
        """Per-frame scores of the predicted frames; every other frame takes its nearest predicted frame's."""
        out = self(x)
        targets = self.targets()
        predicted = self.frame_scores(self.error_map(x[:, :, targets], out.recon[:, :, targets]))  # (B, P)
        frames = fill_nearest(predicted, targets, x.shape[2])
        return ClipScores(
            clip=frames.mean(dim=1), frames=frames, embedding=out.embedding.float(),
            uncertainty=torch.zeros(x.shape[0], device=x.device),
        )
