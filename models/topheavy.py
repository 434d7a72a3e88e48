"""`topheavy`, a small model after "An Examination on Autoencoder Designs for Anomaly Detection in
Video Surveillance" (Table 1): 2D (1x3x3) convolutions in the first, high-resolution levels where
they are cheap, 3D (3x3x3) convolutions in the deeper levels where motion is summarised, max-pooling,
LeakyReLU, batch normalisation, and a sigmoid-activated 3D convolution at the end, on 16x128x128 clips.

The layer widths are this project's choice (see docs/models.md): the paper's table was not at hand
when this was written, so the figures there are ours, measured, not the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from vad.models._base import ClipConfig, ClipModel, ModelOutput, check_divisible
from vad.models._pooled_ae import Kernel, PooledAutoencoder

from vad.errors import ParameterError

POOLS = ((1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))


@dataclass
class TopHeavyConfig(ClipConfig):
    channels: tuple[int, ...] = (8, 16, 32, 64)
    arch: ClassVar[str] = "topheavy"

    def validate(self) -> None:
        super().validate()
        if len(self.channels) != 4 or min(self.channels) < 1:
            raise ParameterError(f"{self.arch}: channels must be 4 positive widths, got {self.channels}")
        check_divisible(self, POOLS, self.arch)


class TopHeavy(ClipModel):
    arch = "topheavy"
    role = "small"
    config_class = TopHeavyConfig
    value_range = (0.0, 1.0)  # sigmoid output
    kernels: ClassVar[tuple[Kernel, ...]] = ((1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3))

    def __init__(self, config: TopHeavyConfig) -> None:
        super().__init__(config)
        self.net = PooledAutoencoder(config.in_channels, config.channels, self.kernels, POOLS)

    def forward(self, x: torch.Tensor) -> ModelOutput:  # (B, C, T, H, W) -> recon (B, C, T, H, W), embedding (B, channels[-1])
        recon, embedding = self.net(x)
        return ModelOutput(recon=recon, embedding=embedding)
