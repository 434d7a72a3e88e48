"""What every clip model shares: the input contract, the output record, the loss and the scores.

A model takes clips (B, C, T, H, W) scaled to its `value_range`, reconstructs them, and exposes an
embedding (B, D) for the out-of-distribution signal. Scores are made per frame from the per-frame
error map, so that a small anomaly in one corner of one frame is not averaged away over the clip.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vad.errors import ParameterError


@dataclass
class ClipConfig:
    """Input geometry and scoring shared by every model; subclasses add their own layers' sizes.

    `score_patch` is the side (in model-input pixels) of the square windows over which the per-frame
    score takes the worst local mean error; 0 scores the mean over the whole frame instead.
    """

    in_channels: int = 1
    clip_len: int = 16
    height: int = 128
    width: int = 128
    score_patch: int = 16

    def validate(self) -> None:
        for name in ("in_channels", "clip_len", "height", "width"):
            if getattr(self, name) < 1:
                raise ParameterError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.in_channels not in (1, 3):
            raise ParameterError(f"in_channels must be 1 (gray) or 3 (RGB), got {self.in_channels}")
        if self.score_patch < 0:
            raise ParameterError(f"score_patch must be >= 0, got {self.score_patch}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ClipConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ParameterError(f"{cls.__name__} has no field(s) {unknown}")
        # JSON and checkpoints carry tuples as lists; the dataclass fields are tuples.
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def to_frames(seconds: float, fps: float, *, minimum: int = 0) -> int:
    """A duration in seconds as a whole number of frames at `fps`, rounded half up, at least `minimum`."""
    return max(minimum, math.floor(seconds * fps + 0.5))


def to_pixels(fraction: float, size: int, *, minimum: int = 1) -> int:
    """A size relative to a frame side (e.g. its height) in whole pixels, rounded half up, at least `minimum`."""
    return max(minimum, math.floor(fraction * size + 0.5))


class Reservoir:
    """A seeded uniform sample of at most `cap` rows of a stream (Vitter's algorithm R), for fits that
    must not hold all of it: the first `cap` rows in stream order, then row i takes a random slot with
    probability cap / (i + 1). Rows are numpy arrays by name, sharing their first axis."""

    def __init__(self, cap: int, *, seed: int) -> None:
        self.cap, self.seen, self._filled = cap, 0, 0
        self._rng = np.random.default_rng(seed)
        self._data: dict[str, np.ndarray] = {}

    def add(self, **rows: np.ndarray) -> None:
        m = len(next(iter(rows.values())))
        if not self._data:
            self._data = {k: np.empty((self.cap, *v.shape[1:]), v.dtype) for k, v in rows.items()}
        take = min(m, self.cap - self._filled)
        for k, v in rows.items():
            self._data[k][self._filled : self._filled + take] = v[:take]
        self._filled += take
        if m > take:
            slot = self._rng.integers(0, self.seen + np.arange(take, m) + 1)  # for rows take..m-1
            hit = np.flatnonzero(slot < self.cap)[::-1]
            _, last = np.unique(slot[hit], return_index=True)  # a slot drawn twice keeps the later row
            hit = hit[last]
            for k, v in rows.items():
                self._data[k][slot[hit]] = v[take:][hit]
        self.seen += m

    def rows(self) -> dict[str, np.ndarray]:
        """The sample, by name: min(cap, rows seen) rows each."""
        return {k: v[: self._filled] for k, v in self._data.items()}


def check_divisible(config: ClipConfig, strides: tuple[tuple[int, int, int], ...], arch: str) -> None:
    """The decoder mirrors the encoder's strides exactly, so T, H, W must divide by their products."""
    for axis, name in enumerate(("clip_len", "height", "width")):
        factor = math.prod(s[axis] for s in strides)
        size = getattr(config, name)
        if size % factor:
            raise ParameterError(f"{arch}: {name}={size} must be a multiple of {factor} (the encoder's total stride)")


@dataclass
class ModelOutput:
    """One forward pass. `kl` is set by variational models (a scalar, mean over the batch)."""

    recon: torch.Tensor  # (B, C, T, H, W), in the model's value range
    embedding: torch.Tensor  # (B, D)
    uncertainty: torch.Tensor | None = None  # (B,), larger = less sure
    kl: torch.Tensor | None = None  # ()


@dataclass
class ClipScores:
    """Scores of a batch of clips, all raw (uncalibrated) reconstruction errors."""

    clip: torch.Tensor  # (B,)  mean of the per-frame scores
    frames: torch.Tensor  # (B, T) worst local (patch) mean squared error of each frame
    embedding: torch.Tensor  # (B, D)
    uncertainty: torch.Tensor  # (B,) zeros for models without one


class ClipModel(nn.Module):
    """Base of the registry's networks: subclasses build layers in `__init__` and define `forward`."""

    arch: ClassVar[str]
    role: ClassVar[str]  # "small" or "large": the role the architecture was designed for
    config_class: ClassVar[type[ClipConfig]]
    value_range: ClassVar[tuple[float, float]] = (-1.0, 1.0)  # of inputs and reconstructions
    appearance_only: ClassVar[bool] = False  # True: scores each frame on its own, blind to motion
    # True: no gradient training; `fit` sets the model's state (buffers) from normal clips
    fitted: ClassVar[bool] = False
    # True: reads frames at the size they are stored (the default input size is the store's)
    native_size: ClassVar[bool] = False
    # True: reads luma only (in_channels=1); training defaults its input to gray on a colour store, the
    # conversion being `tasks/runtime/model_input.py`'s `prepare_clips` (ITU-R BT.601 weights)
    gray_only: ClassVar[bool] = False
    # True for a model whose scoring runs on the CPU whatever the device (OpenCV): it takes no GPU turn
    cpu_bound: ClassVar[bool] = False
    # buffers whose size the fit decides (a bank of normal features): loading resizes them first
    resizable_buffers: ClassVar[tuple[str, ...]] = ()
    # variant name -> config overrides that `vad train` chooses among on the camera's own normal footage
    # (tasks/learning/selection.py); ordered, the first the plain default and `{}`
    VARIANTS: ClassVar[dict[str, dict[str, Any]]] = {"default": {}}

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config

    def forward(self, x: torch.Tensor) -> ModelOutput:  # (B, C, T, H, W) -> ModelOutput
        raise NotImplementedError

    def fit(self, clips: Iterable[torch.Tensor]) -> dict[str, float]:
        """Fitted models only: set the state from normal clips, each (B, C, T, H, W) in the value
        range, and return a record of the fit for the checkpoint's training history."""
        raise NotImplementedError(f"{self.arch} is trained by gradient descent, not fitted")

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        for name in self.resizable_buffers:
            if name in state_dict and getattr(self, name).shape != state_dict[name].shape:
                setattr(self, name, torch.empty_like(state_dict[name], device=getattr(self, name).device))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def loss(self, x: torch.Tensor, out: ModelOutput) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss: mean squared reconstruction error, plus the weighted KL term when present."""
        mse = F.mse_loss(out.recon.float(), x.float())
        parts = {"mse": float(mse.detach())}
        total = mse
        if out.kl is not None:
            weight = float(getattr(self.config, "kl_weight", 0.0))
            total = total + weight * out.kl
            parts["kl"] = float(out.kl.detach())
        return total, parts

    def heldout_error(self, x: torch.Tensor, out: ModelOutput) -> torch.Tensor:  # -> (B,)
        """Per-clip criterion on held-out normal clips, for early stopping and the best weights:
        the mean squared reconstruction error. Models whose score is not a reconstruction override it."""
        return (out.recon.float() - x.float()).pow(2).flatten(1).mean(dim=1)

    @staticmethod
    def error_map(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Squared error averaged over channels: (B, C, T, H, W) x2 -> (B, T, H, W)."""
        return (recon.float() - x.float()).pow(2).mean(dim=1)

    def frame_scores(self, errors: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W) -> (B, T): the worst `score_patch`-square mean error in each frame.

        Windows overlap by half a patch so an anomaly on a window border is not split in two.
        """
        patch = self.config.score_patch
        b, t, h, w = errors.shape
        if patch == 0 or (patch >= h and patch >= w):
            return errors.mean(dim=(2, 3))
        ph, pw = min(patch, h), min(patch, w)
        pooled = F.avg_pool2d(errors.reshape(b * t, 1, h, w), (ph, pw), stride=(max(1, ph // 2), max(1, pw // 2)))
        return pooled.amax(dim=(1, 2, 3)).reshape(b, t)

    @torch.inference_mode()
    def score(self, x: torch.Tensor) -> ClipScores:  # (B, C, T, H, W) -> ClipScores
        """Deterministic scores (call in eval mode; variational models then use the mean latent)."""
        out = self(x)
        frames = self.frame_scores(self.error_map(x, out.recon))
        uncertainty = out.uncertainty if out.uncertainty is not None else torch.zeros(x.shape[0], device=x.device)
        return ClipScores(
            clip=frames.mean(dim=1), frames=frames, embedding=out.embedding.float(), uncertainty=uncertainty.float()
        )


def fill_nearest(scores: torch.Tensor, targets: torch.Tensor, clip_len: int) -> torch.Tensor:
    """(B, P) scores of the frames `targets` -> (B, clip_len): every frame takes its nearest target's
    score, the earlier one on ties. Models that score only some frames of a clip use it."""
    nearest = (torch.arange(clip_len)[:, None] - targets[None, :]).abs().argmin(dim=1)  # first on ties
    return scores[:, nearest.to(scores.device)]


class GaussianLatent(nn.Module):
    """Fully connected map to (mu, log-variance) and back; deterministic (mu) outside training."""

    def __init__(self, features: int, latent: int, *, variational: bool) -> None:
        super().__init__()
        self.variational = variational
        self.encode = nn.Linear(features, 2 * latent if variational else latent)
        self.decode = nn.Linear(latent, features)
        self.latent = latent

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(B, F) -> decoded (B, F), mu (B, L), uncertainty (B,) or None, KL () or None."""
        stats = self.encode(h)
        if not self.variational:
            return self.decode(stats), stats, None, None
        mu, logvar = stats.float().chunk(2, dim=1)
        logvar = logvar.clamp(-10.0, 10.0)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        # KL(q(z|x) || N(0, I)), summed over latent dimensions, averaged over the batch.
        kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1))
        return self.decode(z.to(h.dtype)), mu, logvar.exp().mean(dim=1), kl
