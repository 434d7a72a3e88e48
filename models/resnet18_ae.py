"""`resnet18_ae`, a single-frame autoencoder with a ResNet-18 encoder, scored by pixel error plus
feature consistency.

The encoder is ResNet-18's layout trained from scratch (a 7x7 stride-2 stem, max-pooling, and four
stages of two basic residual blocks at `base_channels` x 1, 2, 4, 8 channels, the last three halving the
resolution), reaching an H/32 x W/32 grid. The decoder has no skip connections (they would let the
network copy its input): five stages of bilinear upsampling and two 3x3 convolutions rebuild the
frame, with a Tanh output.

The score of a frame adds two error maps: the L1 pixel error, and the feature-consistency error,
how far the encoder's features of the reconstruction sit from those of the input at each of the
four stages (the squared distance of channel-normalised feature vectors, `2 - 2 cos`, upsampled to
the frame and averaged over stages). A thing the network has not seen is rebuilt as something
ordinary, and both its pixels and its features then disagree with the input. With `flip_tta` the
error map is averaged with that of the mirrored frame.

The frames 0, `step`, 2 `step`, ... of a clip are reconstructed; the others are returned unchanged and
take, for scoring, the score of the nearest reconstructed frame. Training minimises the L1 pixel
error plus `feature_weight` times the feature-consistency error.
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

_STRIDE = (1, 32, 32)  # the encoder's total stride (stem 2, pool 2, three stages of 2)


@dataclass
class ResNet18AEConfig(ClipConfig):
    base_channels: int = 64  # channels of the first stage; ResNet-18's own is 64
    step: int = 4  # reconstruct every step-th frame of a clip
    feature_weight: float = 1.0  # of the feature-consistency error, in the loss and in the score
    flip_tta: bool = True  # average the score's error map with that of the mirrored frame

    def validate(self) -> None:
        super().validate()
        if self.base_channels < 1:
            raise ParameterError(f"resnet18_ae: base_channels must be >= 1, got {self.base_channels}")
        if not 1 <= self.step <= self.clip_len:
            raise ParameterError(f"resnet18_ae: step must be in [1, clip_len], got {self.step} with clip_len {self.clip_len}")
        if self.feature_weight < 0:
            raise ParameterError(f"resnet18_ae: feature_weight must be >= 0, got {self.feature_weight}")
        check_divisible(self, (_STRIDE,), "resnet18_ae")


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions with batch norm, a strided 1x1 projection when needed."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.shortcut = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class ResNet18AE(ClipModel):
    arch = "resnet18_ae"
    role = "large"
    config_class = ResNet18AEConfig
    appearance_only = True

    def __init__(self, config: ResNet18AEConfig) -> None:
        super().__init__(config)
        w = config.base_channels
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, w, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        widths = (w, 2 * w, 4 * w, 8 * w)
        self.stages = nn.ModuleList(
            nn.Sequential(BasicBlock(widths[i - 1] if i else w, widths[i], 1 if i == 0 else 2), BasicBlock(widths[i], widths[i], 1))
            for i in range(4)
        )
        ups = (8 * w, 4 * w, 2 * w, w, max(1, w // 2), max(1, w // 2))
        self.decoder = nn.Sequential(*(_up(ups[i], ups[i + 1]) for i in range(5)))
        self.head = nn.Sequential(nn.Conv2d(ups[-1], config.in_channels, 3, padding=1), nn.Tanh())

    def targets(self) -> torch.Tensor:
        """Indices of the reconstructed frames within a clip."""
        return torch.arange(0, self.config.clip_len, self.config.step)

    def features(self, frames: torch.Tensor) -> list[torch.Tensor]:  # (N, C, H, W) -> four (N, c_i, H/4/2^i, W/4/2^i)
        z = self.stem(frames)
        out = []
        for stage in self.stages:
            z = stage(z)
            out.append(z)
        return out

    def _frames(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W) -> (B * P, C, H, W)
        c, h, w = x.shape[1], x.shape[3], x.shape[4]
        return x[:, :, self.targets()].transpose(1, 2).reshape(-1, c, h, w)

    def _embedding(self, deepest: torch.Tensor, batch: int) -> torch.Tensor:  # (B * P, c, h, w) -> (B, c)
        """The deepest features' global average over each clip's rebuilt frames."""
        return deepest.mean(dim=(2, 3)).reshape(batch, len(self.targets()), -1).mean(dim=1)

    def _reconstruct(self, frames: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = self.features(frames)
        return self.head(self.decoder(feats[-1])), feats

    def forward(self, x: torch.Tensor) -> ModelOutput:  # (B, C, T, H, W) -> recon (B, C, T, H, W), embedding (B, 8 base_channels)
        b, c, t, h, w = x.shape
        targets = self.targets()
        rebuilt, feats = self._reconstruct(self._frames(x))
        embedding = self._embedding(feats[-1], b)
        recon = x.clone()
        recon[:, :, targets] = rebuilt.to(x.dtype).reshape(b, len(targets), c, h, w).transpose(1, 2)
        return ModelOutput(recon=recon, embedding=embedding)

    def feature_error(self, frames: list[torch.Tensor], rebuilt: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Per-pixel feature-consistency error (N, H, W): 2 - 2 cos of the features at each stage, upsampled, averaged."""
        maps = []
        for a, r in zip(frames, rebuilt):
            d = (F.normalize(a.float(), dim=1) - F.normalize(r.float(), dim=1)).pow(2).sum(dim=1, keepdim=True)
            maps.append(F.interpolate(d, size=size, mode="bilinear", align_corners=False))
        return torch.cat(maps, dim=1).mean(dim=1)

    def _error_maps(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, C, H, W) -> pixel L1 error (N, H, W), feature-consistency error (N, H, W), deepest features."""
        rebuilt, feats = self._reconstruct(frames)
        pixel = (rebuilt.float() - frames.float()).abs().mean(dim=1)
        feature = self.feature_error(feats, self.features(rebuilt), frames.shape[-2:])
        return pixel, feature, feats[-1]

    def loss(self, x: torch.Tensor, out: ModelOutput) -> tuple[torch.Tensor, dict[str, float]]:
        frames, rebuilt = self._frames(x), self._frames(out.recon)
        diff = rebuilt.float() - frames.float()
        l1 = diff.abs().mean()
        # The input's features are the target (no gradient through them); the reconstruction's
        # features are pulled towards them.
        with torch.no_grad():
            target = self.features(frames)
        fc = self.feature_error(target, self.features(rebuilt), frames.shape[-2:]).mean()
        return l1 + self.config.feature_weight * fc, {
            "mse": float(diff.detach().pow(2).mean()), "l1": float(l1.detach()), "feature": float(fc.detach()),
        }

    @torch.inference_mode()
    def score(self, x: torch.Tensor) -> ClipScores:
        """Per-frame scores of the reconstructed frames (pixel plus weighted feature error, optionally
        flip-averaged); every other frame takes its nearest reconstructed frame's."""
        b, _, t, h, w = x.shape
        targets = self.targets()
        frames = self._frames(x)
        pixel, feature, deepest = self._error_maps(frames)
        errors = pixel + self.config.feature_weight * feature
        if self.config.flip_tta:
            pixel_f, feature_f, _ = self._error_maps(frames.flip(-1))
            errors = 0.5 * (errors + (pixel_f + self.config.feature_weight * feature_f).flip(-1))
        scored = self.frame_scores(errors.reshape(b, len(targets), h, w))
        per_frame = fill_nearest(scored, targets, t)
        embedding = self._embedding(deepest, b)
        return ClipScores(
            clip=per_frame.mean(dim=1), frames=per_frame, embedding=embedding.float(),
            uncertainty=torch.zeros(b, device=x.device),
        )
