"""`forecaster`, a temporal feature forecaster: a per-frame CNN encoder and a convolutional GRU that
predicts the features of frame t + `horizon` from frames 0..t; the score is the forecast error.

The encoder (three stages of a strided and a plain 3x3 convolution with batch norm and ReLU, at
`channels` widths) maps each frame to a feature grid at 1/8 of its size. A convolutional GRU reads
the grids in order, and from its state after frame t a 3x3 convolution predicts the grid of frame
t + `horizon`. Forecasts and targets are compared as channel-normalised vectors (`2 - 2 cos` per grid
cell), so the error does not depend on the features' scale, and the targets carry no gradient.
A decoder rebuilds each frame from its grid; its reconstruction loss keeps the encoder's features
tied to the image, so the encoder cannot make forecasting trivial by forgetting the input.

Frames `horizon`, ..., T - 1 of a clip are forecast; the first `horizon` frames take the score of
frame `horizon`. The error map is upsampled to the frame and scored by the worst patch like every
model. `recon` is the decoder's reconstruction (the forecast lives in feature space).
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
class ForecasterConfig(ClipConfig):
    channels: tuple[int, ...] = (16, 32, 64)  # encoder widths, one stride-2 stage each
    horizon: int = 4  # frames ahead that the features are forecast
    recon_weight: float = 1.0  # of the decoder's reconstruction loss

    def validate(self) -> None:
        super().validate()
        if len(self.channels) < 1 or min(self.channels) < 1:
            raise ParameterError(f"forecaster: channels must be positive widths, got {self.channels}")
        if not 1 <= self.horizon < self.clip_len:
            raise ParameterError(f"forecaster: horizon must be in [1, clip_len), got {self.horizon} with clip_len {self.clip_len}")
        if self.recon_weight < 0:
            raise ParameterError(f"forecaster: recon_weight must be >= 0, got {self.recon_weight}")
        check_divisible(self, ((1, 2, 2),) * len(self.channels), "forecaster")


def _conv(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class ConvGRUCell(nn.Module):
    """A GRU whose gates are 3x3 convolutions over (input, state) grids."""

    def __init__(self, c_in: int, hidden: int) -> None:
        super().__init__()
        self.gates = nn.Conv2d(c_in + hidden, 2 * hidden, 3, padding=1)
        self.candidate = nn.Conv2d(c_in + hidden, hidden, 3, padding=1)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:  # (N, c_in, h, w), (N, hidden, h, w) -> new state
        update, reset = torch.sigmoid(self.gates(torch.cat([x, h], dim=1))).chunk(2, dim=1)
        candidate = torch.tanh(self.candidate(torch.cat([x, reset * h], dim=1)))
        return (1 - update) * h + update * candidate


class Forecaster(ClipModel):
    arch = "forecaster"
    role = "large"
    config_class = ForecasterConfig

    def __init__(self, config: ForecasterConfig) -> None:
        super().__init__(config)
        c = (config.in_channels, *config.channels)
        self.encoder = nn.Sequential(*(m for i in range(len(c) - 1) for m in _conv(c[i], c[i + 1], 2) + _conv(c[i + 1], c[i + 1])))
        ups: list[nn.Module] = []
        for i in reversed(range(1, len(c))):
            ups += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), *_conv(c[i], c[max(i - 1, 1)])]
        self.decoder = nn.Sequential(*ups, nn.Conv2d(c[1], config.in_channels, 3, padding=1), nn.Tanh())
        width = c[-1]
        self.gru = ConvGRUCell(width, width)
        self.forecast = nn.Conv2d(width, width, 3, padding=1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W) -> (B, T, c, H/s, W/s)
        b, c, t, h, w = x.shape
        z = self.encoder(x.transpose(1, 2).reshape(b * t, c, h, w))
        return z.reshape(b, t, *z.shape[1:])

    def forecast_error(self, grids: torch.Tensor) -> torch.Tensor:
        """(B, T, c, h, w) feature grids -> (B, T - horizon, h, w): 2 - 2 cos between the forecast of
        frame t + horizon (made after frame t) and its grid, for t = 0..T - horizon - 1."""
        b, t = grids.shape[:2]
        k = self.config.horizon
        state = torch.zeros_like(grids[:, 0])
        forecasts = []
        for i in range(t - k):
            state = self.gru(grids[:, i], state)
            forecasts.append(self.forecast(state))
        predicted = F.normalize(torch.stack(forecasts, dim=1).float(), dim=2)
        target = F.normalize(grids[:, k:].detach().float(), dim=2)
        return (predicted - target).pow(2).sum(dim=2)

    def forward(self, x: torch.Tensor) -> ModelOutput:  # (B, C, T, H, W) -> recon (B, C, T, H, W), embedding (B, c[-1])
        b, c, t, h, w = x.shape
        grids = self.encode(x)
        recon = self.decoder(grids.flatten(0, 1)).to(x.dtype).reshape(b, t, c, h, w).transpose(1, 2)
        return ModelOutput(recon=recon, embedding=grids.mean(dim=(1, 3, 4)))

    def loss(self, x: torch.Tensor, out: ModelOutput) -> tuple[torch.Tensor, dict[str, float]]:
        # The encoder runs again here: the forecast loss needs the grids, which ModelOutput does not carry.
        forecast = self.forecast_error(self.encode(x)).mean()
        mse = F.mse_loss(out.recon.float(), x.float())
        total = forecast + self.config.recon_weight * mse
        return total, {"mse": float(mse.detach()), "forecast": float(forecast.detach())}

    def heldout_error(self, x: torch.Tensor, out: ModelOutput) -> torch.Tensor:  # -> (B,)
        """The held-out criterion is the forecast error (what scores), plus the weighted reconstruction error."""
        forecast = self.forecast_error(self.encode(x)).mean(dim=(1, 2, 3))
        return forecast + self.config.recon_weight * super().heldout_error(x, out)

    @torch.inference_mode()
    def score(self, x: torch.Tensor) -> ClipScores:
        """Per-frame forecast error, upsampled to the frame and scored by the worst patch; the first
        `horizon` frames take frame `horizon`'s score. The decoder is not run."""
        b, _, t, h, w = x.shape
        grids = self.encode(x)
        errors = self.forecast_error(grids)  # (B, T - k, h', w')
        errors = F.interpolate(errors, size=(h, w), mode="bilinear", align_corners=False)
        forecast_frames = torch.arange(self.config.horizon, t)
        frames = fill_nearest(self.frame_scores(errors), forecast_frames, t)
        return ClipScores(
            clip=frames.mean(dim=1), frames=frames, embedding=grids.mean(dim=(1, 3, 4)).float(),
            uncertainty=torch.zeros(b, device=x.device),
        )
