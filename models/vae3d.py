"""`vae3d`, the seed design's small model: a 3D-convolutional variational autoencoder.

Four strided Conv3D blocks, a fully connected layer to the mean and log-variance of a 512-d latent,
and four ConvTranspose3D blocks back to the clip, with a Tanh output. Trained on MSE plus a weighted
KL term; scoring uses the mean latent only, and the mean posterior variance is its uncertainty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from vad.models._base import (
    ClipConfig,
    ClipModel,
    GaussianLatent,
    ModelOutput,
    check_divisible,
)

from vad.errors import ParameterError


@dataclass
class VAE3DConfig(ClipConfig):
    channels: tuple[int, ...] = (16, 32, 64, 128)  # encoder widths; the decoder mirrors them
    latent: int = 512
    kl_weight: float = 1e-4
    variational: bool = True

    def validate(self) -> None:
        super().validate()
        if len(self.channels) != 4 or min(self.channels) < 1:
            raise ParameterError(f"vae3d: channels must be 4 positive widths, got {self.channels}")
        if self.latent < 1 or self.kl_weight < 0:
            raise ParameterError(f"vae3d: latent must be >= 1 and kl_weight >= 0, got {self.latent}, {self.kl_weight}")
        check_divisible(self, ((2, 2, 2),) * 4, "vae3d")


def _down(c_in: int, c_out: int) -> nn.Sequential:
    # kernel 3, stride 2, padding 1 halves T, H and W exactly when they are even
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm3d(c_out), nn.LeakyReLU(0.2))


def _up(c_in: int, c_out: int, *, last: bool = False) -> nn.Sequential:
    # kernel 4, stride 2, padding 1 doubles T, H and W exactly
    conv = nn.ConvTranspose3d(c_in, c_out, 4, stride=2, padding=1, bias=last)
    return nn.Sequential(conv, nn.Tanh()) if last else nn.Sequential(conv, nn.BatchNorm3d(c_out), nn.LeakyReLU(0.2))


class VAE3D(ClipModel):
    arch = "vae3d"
    role = "small"
    config_class = VAE3DConfig

    def __init__(self, config: VAE3DConfig) -> None:
        super().__init__(config)
        c = config.channels
        self.encoder = nn.Sequential(_down(config.in_channels, c[0]), _down(c[0], c[1]), _down(c[1], c[2]), _down(c[2], c[3]))
        self.bottleneck = (c[3], config.clip_len // 16, config.height // 16, config.width // 16)
        self.latent = GaussianLatent(math.prod(self.bottleneck), config.latent, variational=config.variational)
        self.decoder = nn.Sequential(
            _up(c[3], c[2]), _up(c[2], c[1]), _up(c[1], c[0]), _up(c[0], config.in_channels, last=True)
        )

    def forward(self, x: torch.Tensor) -> ModelOutput:  # (B, C, T, H, W) -> recon (B, C, T, H, W), mu (B, 512)
        h = self.encoder(x)  # (B, c3, T/16, H/16, W/16)
        decoded, mu, uncertainty, kl = self.latent(h.flatten(1))
        recon = self.decoder(decoded.reshape(-1, *self.bottleneck))
        return ModelOutput(recon=recon, embedding=mu, uncertainty=uncertainty, kl=kl)
