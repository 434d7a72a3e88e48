"""`motion_patch`, a no-backprop small model: per-patch frame-difference energy, scored against
statistics fitted on normal footage.

Per frame t of a clip (model input: gray frames in [0, 1], any resolution the InputSpec gives):

    d_t      = |x_t - x_{t-lag}|                                   (B, T-lag, H, W)
    e_t(i,j) = mean of d_t over the patch (i, j)                   (B, T, gh, gw)
               (square `score_patch` windows at half-patch stride; the first `lag` frames of a
               clip take frame `lag`'s energy)
    s_t(i,j) = e_t(i,j)                    statistic "raw"
             = e_t(i,j) - q(i,j)           statistic "minus_q"    (q: the cell's `quantile` on normal frames)
             = e_t(i,j) - m(i,j)           statistic "minus_mean" (m: the cell's mean on normal frames)
    frame score f_t = max_(i,j) s_t(i,j)                             (B, T)
    clip score      = mean_t f_t                                     (B,)

Embedding (B, gy*gx + 2): log1p of the clip's mean energy on a coarse gy x gx grid divided by the
normal mean energy, plus log1p of the clip's mean and max frame score over the normal frame-score
scale: where and how much things move, for the router's out-of-distribution (cosine) distance.

Uncertainty (B,): how unstable the frame scores are inside the clip (their standard deviation over
T) over the normal frame-score scale: a clip with a burst of motion in a few frames is one whose
mean score hides what happens, the kind a large model is most likely to re-rank.

Fitted state (registered buffers, saved as tensors in a checkpoint, `weights_only` loading):
cell_mean (gh, gw), cell_q (gh, gw), energy_scale (), frame_scale (), is_fitted (), set by `fit` from
normal clips (`vad train` fits it: no gradient steps, no trainable parameters). `forward` does not
reconstruct (recon is the input itself).

Defaults: the frame-difference baseline the design notes measured on Ped2 (raw statistic, 16-pixel
patches at the stored 240x360) - a setting fixed before any validation. Choosing among the
statistics and resolutions on held-out normal videos with synthetic anomalies picked `minus_q` at
60x90, which ranked real anomalies worse (docs/quality.md has the table): the synthetic anomalies
move where normal footage is calm, and real ones (cyclists, carts) move along the walkways.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from vad.models._base import ClipConfig, ClipModel, ClipScores, ModelOutput

from vad.errors import ParameterError

STATISTICS = ("raw", "minus_q", "minus_mean")


@dataclass
class MotionPatchConfig(ClipConfig):
    height: int = 240  # model input size: the stored Ped2 size by default
    width: int = 360
    score_patch: int = 16  # patch side in model-input pixels (windows at half-patch stride)
    lag: int = 1  # difference to the frame `lag` before
    statistic: str = "raw"  # one of STATISTICS
    quantile: float = 0.99  # of the "minus_q" statistic
    embed_grid: tuple[int, int] = (4, 6)  # coarse grid of the embedding's energy map

    def validate(self) -> None:
        super().validate()
        if self.in_channels != 1:
            raise ParameterError(f"motion_patch: gray input only (in_channels=1), got {self.in_channels}")
        if not 1 <= self.lag < self.clip_len:
            raise ParameterError(f"motion_patch: lag must be in [1, clip_len), got {self.lag}")
        if not 1 <= self.score_patch <= min(self.height, self.width):
            raise ParameterError(f"motion_patch: score_patch must be in [1, {min(self.height, self.width)}], got {self.score_patch}")
        if self.statistic not in STATISTICS:
            raise ParameterError(f"motion_patch: statistic must be one of {STATISTICS}, got {self.statistic!r}")
        if not 0.0 < self.quantile < 1.0:
            raise ParameterError(f"motion_patch: quantile must be in (0, 1), got {self.quantile}")
        if len(self.embed_grid) != 2 or min(self.embed_grid) < 1:
            raise ParameterError(f"motion_patch: embed_grid must be two positive sizes, got {self.embed_grid}")

    @property
    def grid(self) -> tuple[int, int]:
        """(gh, gw): patch cells per frame."""
        p, s = self.score_patch, max(1, self.score_patch // 2)
        return (self.height - p) // s + 1, (self.width - p) // s + 1


class MotionPatch(ClipModel):
    arch = "motion_patch"
    role = "small"
    config_class = MotionPatchConfig
    value_range = (0.0, 1.0)
    fitted = True
    native_size = True

    def __init__(self, config: MotionPatchConfig) -> None:
        super().__init__(config)
        gh, gw = config.grid
        self.register_buffer("cell_mean", torch.zeros(gh, gw))
        self.register_buffer("cell_q", torch.zeros(gh, gw))
        self.register_buffer("energy_scale", torch.ones(()))
        self.register_buffer("frame_scale", torch.ones(()))
        self.register_buffer("is_fitted", torch.zeros((), dtype=torch.bool))

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, H, W) -> (B, T, gh, gw) mean |x_t - x_{t-lag}| per patch."""
        b, _, t, h, w = x.shape
        lag, p = self.config.lag, self.config.score_patch
        y = x[:, 0]
        d = (y[:, lag:] - y[:, :-lag]).abs_()  # (B, T-lag, H, W)
        if p % 2 == 0:  # the same windows, cheaper: (p/2)-blocks first, then 2x2 of blocks at stride 1
            e = F.avg_pool2d(F.avg_pool2d(d, p // 2), 2, stride=1)  # channels = frames: pooled per frame
        else:
            e = F.avg_pool2d(d, p, stride=max(1, p // 2))
        return torch.cat([e[:, :1].expand(b, lag, *e.shape[2:]), e], dim=1)

    def statistic(self, e: torch.Tensor) -> torch.Tensor:
        """(B, T, gh, gw) energies -> (B, T, gh, gw) per-cell scores."""
        stat = self.config.statistic
        if stat == "raw":
            return e
        return e - (self.cell_q if stat == "minus_q" else self.cell_mean)

    def embed(self, e: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, gh, gw), (B, T) -> (B, gy * gx + 2)."""
        coarse = F.adaptive_avg_pool2d(e.mean(dim=1, keepdim=True), self.config.embed_grid).flatten(1)
        level = torch.stack([frames.mean(dim=1), frames.amax(dim=1)], dim=1).clamp_min(0)
        return torch.cat([torch.log1p(coarse / self.energy_scale), torch.log1p(level / self.frame_scale)], dim=1)

    def forward(self, x: torch.Tensor) -> ModelOutput:  # (B, 1, T, H, W) -> recon = x, embedding (B, D)
        s = self.score(x)
        return ModelOutput(recon=x, embedding=s.embedding, uncertainty=s.uncertainty)

    @torch.inference_mode()
    def score(self, x: torch.Tensor) -> ClipScores:  # (B, 1, T, H, W) in [0, 1] -> ClipScores
        x = x.float()
        e = self.energy(x)  # (B, T, gh, gw)
        frames = self.statistic(e).flatten(2).amax(dim=2)  # (B, T)
        uncertainty = frames.std(dim=1) / self.frame_scale  # (B,)
        return ClipScores(clip=frames.mean(dim=1), frames=frames, embedding=self.embed(e, frames), uncertainty=uncertainty)

    @torch.inference_mode()
    def fit(self, clips: Iterable[torch.Tensor]) -> dict[str, float]:
        """Fit the buffers from normal clips, each (B, 1, T, H, W) in [0, 1] (as `prepare_clips` gives).

        Every clip frame's patch energies count (frames covered by two clips count twice, as in scoring).
        """
        energies = [self.energy(x.float()).flatten(0, 1) for x in clips]  # each (B*T, gh, gw)
        if not energies:
            raise ParameterError("motion_patch: no normal clips to fit on")
        e = torch.cat(energies)
        self.cell_mean.copy_(e.mean(dim=0))
        # torch.quantile takes at most 2**24 values per call: per column over frames
        flat = e.flatten(1)
        qs = torch.cat([torch.quantile(flat[:, i : i + 256], self.config.quantile, dim=0) for i in range(0, flat.shape[1], 256)])
        self.cell_q.copy_(qs.view_as(self.cell_q))
        self.energy_scale.copy_(e.mean().clamp_min(1e-6))
        frames = self.statistic(e).flatten(1).amax(dim=1)
        self.frame_scale.copy_(frames.std().clamp_min(1e-6))
        self.is_fitted.fill_(True)
        return {"frames": float(e.shape[0]), "mean_energy": float(self.energy_scale)}
