"""`resnet3d_attn`, the seed design's large model: residual 3D encoder, self-attention, 3D decoder.

A strided stem and five residual 3D blocks (the first four downsample) reach a bottleneck grid of
T/8 x H/32 x W/32 cells; multi-head self-attention runs over those cells as tokens, a fully connected
layer maps them to a 1024-d latent (Gaussian by default, like `vae3d`, so the loss interface is the
same) and back, and five ConvTranspose3D blocks rebuild the clip with a Tanh output.
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

# Strides of the stem and the five blocks, as (T, H, W); the decoder undoes them in reverse.
_STEM = (1, 2, 2)
_BLOCKS = ((1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 1, 1))


@dataclass
class ResNet3DAttnConfig(ClipConfig):
    channels: tuple[int, ...] = (16, 32, 64, 128, 256, 256)  # stem, then the five blocks
    latent: int = 1024
    heads: int = 8
    attention_layers: int = 2
    kl_weight: float = 1e-4
    variational: bool = True

    def validate(self) -> None:
        super().validate()
        if len(self.channels) != 6 or min(self.channels) < 1:
            raise ParameterError(f"resnet3d_attn: channels must be 6 positive widths, got {self.channels}")
        if self.channels[-1] % self.heads:
            raise ParameterError(f"resnet3d_attn: heads={self.heads} must divide the bottleneck width {self.channels[-1]}")
        if self.latent < 1 or self.attention_layers < 0 or self.kl_weight < 0:
            raise ParameterError("resnet3d_attn: latent >= 1, attention_layers >= 0 and kl_weight >= 0 required")
        check_divisible(self, (_STEM, *_BLOCKS), "resnet3d_attn")


class ResidualBlock3D(nn.Module):
    """Two 3x3x3 convolutions with batch norm; a strided 1x1x1 projection on the shortcut when needed."""

    def __init__(self, c_in: int, c_out: int, stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True),
            nn.Conv3d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out),
        )
        needs_projection = c_in != c_out or stride != (1, 1, 1)
        self.shortcut = (
            nn.Sequential(nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm3d(c_out))
            if needs_projection else nn.Identity()
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def _up(c_in: int, c_out: int, stride: tuple[int, int, int], *, last: bool = False) -> nn.Sequential:
    # kernel = stride + 2 with padding 1 multiplies each axis by its stride exactly (3 when stride 1)
    kernel = tuple(s + 2 for s in stride)
    conv = nn.ConvTranspose3d(c_in, c_out, kernel, stride=stride, padding=1, bias=last)
    return nn.Sequential(conv, nn.Tanh()) if last else nn.Sequential(conv, nn.BatchNorm3d(c_out), nn.ReLU(inplace=True))


class ResNet3DAttn(ClipModel):
    arch = "resnet3d_attn"
    role = "large"
    config_class = ResNet3DAttnConfig

    def __init__(self, config: ResNet3DAttnConfig) -> None:
        super().__init__(config)
        c = config.channels
        self.stem = nn.Sequential(
            nn.Conv3d(config.in_channels, c[0], 3, stride=_STEM, padding=1, bias=False), nn.BatchNorm3d(c[0]), nn.ReLU(inplace=True)
        )
        self.blocks = nn.Sequential(*(ResidualBlock3D(c[i], c[i + 1], s) for i, s in enumerate(_BLOCKS)))
        grid = [getattr(config, n) // math.prod(s[a] for s in (_STEM, *_BLOCKS)) for a, n in enumerate(("clip_len", "height", "width"))]
        self.grid = tuple(grid)
        tokens, width = math.prod(grid), c[-1]
        self.position = nn.Parameter(torch.zeros(1, tokens, width))
        nn.init.trunc_normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(width, config.heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.attention = nn.TransformerEncoder(layer, config.attention_layers, enable_nested_tensor=False) if config.attention_layers else nn.Identity()
        self.latent = GaussianLatent(tokens * width, config.latent, variational=config.variational)
        # Decoder: undo the downsampling blocks (reversed), then the stem.
        ups = [s for s in reversed(_BLOCKS) if s != (1, 1, 1)] + [_STEM]
        widths = [c[-1], c[3], c[2], c[1], c[0]]
        self.decoder = nn.Sequential(
            *(_up(widths[i], widths[i + 1], ups[i]) for i in range(4)), _up(widths[4], config.in_channels, ups[4], last=True)
        )

    def forward(self, x: torch.Tensor) -> ModelOutput:  # (B, C, T, H, W) -> recon (B, C, T, H, W), mu (B, 1024)
        h = self.blocks(self.stem(x))  # (B, c5, T/8, H/32, W/32)
        b, width = h.shape[:2]
        tokens = self.attention(h.flatten(2).transpose(1, 2) + self.position)  # (B, T'H'W', c5)
        decoded, mu, uncertainty, kl = self.latent(tokens.flatten(1))
        grid = decoded.reshape(b, -1, width).transpose(1, 2).reshape(b, width, *self.grid)
        return ModelOutput(recon=self.decoder(grid), embedding=mu, uncertainty=uncertainty, kl=kl)
