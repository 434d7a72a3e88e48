"""The layout `topheavy` and `ae3d` share: convolution + batch norm + LeakyReLU + max-pooling levels
down, transposed convolutions up, and a sigmoid-activated 3D convolution at the end.

Each level has a kernel: (1, 3, 3) is a 2D convolution applied frame by frame, (3, 3, 3) a 3D one.
Levels that pool (1, 2, 2) keep the clip length; levels that pool (2, 2, 2) halve it too.
"""

from __future__ import annotations

import torch
from torch import nn

Kernel = tuple[int, int, int]


def encoder_level(c_in: int, c_out: int, kernel: Kernel, pool: Kernel) -> nn.Sequential:
    padding = tuple(k // 2 for k in kernel)
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, kernel, padding=padding, bias=False), nn.BatchNorm3d(c_out), nn.LeakyReLU(0.2, inplace=True),
        nn.MaxPool3d(pool),
    )


def decoder_level(c_in: int, c_out: int, kernel: Kernel, scale: Kernel) -> nn.Sequential:
    # A transposed convolution undoing one pooling. On an axis pooled by 2: kernel 4, padding 1 where
    # the level's kernel is 3, kernel 2, padding 0 where it is 1 (both double the axis exactly); on an
    # axis not pooled: the level's kernel with padding k // 2 (size kept).
    k = tuple((4 if kk == 3 else 2) if s == 2 else kk for kk, s in zip(kernel, scale))
    p = tuple((1 if kk == 3 else 0) if s == 2 else kk // 2 for kk, s in zip(kernel, scale))
    return nn.Sequential(
        nn.ConvTranspose3d(c_in, c_out, k, stride=scale, padding=p, bias=False), nn.BatchNorm3d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


class PooledAutoencoder(nn.Module):
    """(B, C, T, H, W) -> reconstruction (B, C, T, H, W) in [0, 1] and a pooled embedding (B, D)."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], kernels: tuple[Kernel, ...], pools: tuple[Kernel, ...]) -> None:
        super().__init__()
        widths = (in_channels, *channels)
        self.encoder = nn.Sequential(*(encoder_level(widths[i], widths[i + 1], kernels[i], pools[i]) for i in range(len(channels))))
        # Level i of the decoder undoes pooling i and returns to the width of encoder level i - 1;
        # the last one keeps channels[0], and the head maps that to the clip's channels.
        outs = (channels[0], *channels[:-1])
        self.decoder = nn.Sequential(
            *(decoder_level(channels[i], outs[i], kernels[i], pools[i]) for i in reversed(range(len(channels))))
        )
        self.head = nn.Sequential(nn.Conv3d(channels[0], in_channels, 3, padding=1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)  # (B, c_last, T', H', W')
        embedding = h.mean(dim=(2, 3, 4))  # (B, c_last): global average of the bottleneck
        return self.head(self.decoder(h)), embedding
