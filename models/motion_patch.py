"""`motion_patch`, a no-backprop small model: per-patch frame-difference energy, scored against
statistics fitted on normal footage.

Per frame t of a clip (model input: gray frames in [0, 1], any resolution the InputSpec gives):

    d_t      = |x_t - x_{t-lag}|                                   (B, T-lag, H, W)
               (lag: `lag_s` seconds at the config's `fps`, whole frames, at least 1)
    e_t(i,j) = mean of d_t over the patch (i, j)                   (B, T, gh, gw)
               (square windows of `patch_frac` of the frame height at half-patch stride; the
               first `lag` frames of a clip take frame `lag`'s energy)
    s_t(i,j) = e_t(i,j)                    statistic "raw"
             = e_t(i,j) - q(i,j)           statistic "minus_q"    (q: the cell's `quantile` on normal frames)
             = e_t(i,j) - m(i,j)           statistic "minus_mean" (m: the cell's mean on normal frames)
             = (e_t(i,j) - m(i,j)) / s(i,j) statistic "z"         (s: the cell's normal spread, below)
             = e_t(i,j) / r(i,j)           statistic "ratio_q"   (r = q(i,j) + `cell_prior` * mean q)
    frame score f_t = max_(i,j) s_t(i,j)                             (B, T)
    clip score      = mean_t f_t                                     (B,)

"z" and "ratio_q" judge each cell against its own normal level, so they carry across a camera
with perspective (a person near the camera moves more pixels than one far away). The spread is
s(i,j)^2 = v(i,j) + `cell_prior` * mean v, v the cell's variance of energy on normal frames: a cell
that barely moves on normal footage borrows a share of the average cell's spread instead of
dividing by almost nothing; both denominators are floored at `SPREAD_FLOOR`.

Embedding (B, gy*gx + 2): log1p of the clip's mean energy on a coarse gy x gx grid divided by the
normal mean energy, plus log1p of the clip's mean and max frame score over the normal frame-score
scale: where and how much things move, for the router's out-of-distribution (cosine) distance.

Uncertainty (B,): how unstable the frame scores are inside the clip (their standard deviation over
T) over the normal frame-score scale: a clip with a burst of motion in a few frames is one whose
mean score hides what happens, the kind a large model is most likely to re-rank.

Fitted state (registered buffers, saved as tensors in a checkpoint, `weights_only` loading):
cell_mean (gh, gw), cell_q (gh, gw; 0 unless the statistic is "minus_q" or "ratio_q"), cell_spread
(gh, gw; the "z" spread or the "ratio_q" denominator, else 1; a checkpoint made before it loads
with ones), energy_scale (),
frame_scale (), is_fitted (), set by `fit` from normal clips streamed once in bounded memory
(`vad train` fits it: no gradient steps, no trainable parameters). `forward` does not reconstruct
(recon is the input itself).

Defaults: the frame-difference baseline the design notes measured on Ped2 (raw statistic, 16-pixel
patches at the stored 240x360, the previous frame at 10 fps) - a setting fixed before any validation. Choosing among the
statistics and resolutions on held-out normal videos with synthetic anomalies picked `minus_q` at
60x90, which ranked real anomalies worse (docs/quality.md has the table): the synthetic anomalies
move where normal footage is calm, and real ones (cyclists, carts) move along the walkways.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from vad.models._base import ClipConfig, ClipModel, ClipScores, ModelOutput, Reservoir, to_frames, to_pixels

from vad.errors import ParameterError
from vad.tasks.sources.luma import LUMA

STATISTICS = ("raw", "minus_q", "minus_mean", "z", "ratio_q")
SPREAD_FLOOR = 1e-3  # of the "z" / "ratio_q" denominators: a quarter of a gray level of mean change
BINS = 4096  # histogram bins over the energy range [0, 1] (a quantile is exact to within half a bin)
FRAME_SAMPLE = 8192  # frames sampled to fit the frame-score scale of the "minus_*" statistics


@dataclass
class MotionPatchConfig(ClipConfig):
    """Units: `lag_s` in seconds (whole frames at `fps`, at least 1), `patch_frac` a fraction of the
    frame height; `score_patch` / `lag` > 0 give them in pixels / frames instead (checkpoints made
    before the units carry them). The defaults are 1 frame and 16 px at Ped2's 10 fps and 240 rows."""

    height: int = 240  # model input size: the stored Ped2 size by default
    width: int = 360
    fps: float = 10.0  # the store's frame rate (`vad train` sets it), for `lag_s`
    score_patch: int = 0  # patch side in px (windows at half-patch stride); 0: `patch_frac` of the height
    patch_frac: float = 16 / 240
    lag: int = 0  # difference to the frame `lag` before; 0: `lag_s` at `fps`
    lag_s: float = 0.1
    statistic: str = "raw"  # one of STATISTICS
    quantile: float = 0.99  # of the "minus_q" and "ratio_q" statistics
    cell_prior: float = 0.25  # the average cell's weight in each cell's spread ("z") or quantile ("ratio_q")
    embed_grid: tuple[int, int] = (4, 6)  # coarse grid of the embedding's energy map

    def validate(self) -> None:
        super().validate()
        if self.in_channels != 1:
            raise ParameterError(f"motion_patch: gray input only (in_channels=1), got {self.in_channels}")
        if not self.fps > 0:
            raise ParameterError(f"motion_patch: fps must be > 0, got {self.fps}")
        if self.lag < 0 or not self.lag_s > 0:
            raise ParameterError(f"motion_patch: lag must be >= 0 and lag_s > 0, got {self.lag}, {self.lag_s}")
        if not 1 <= self.lag_frames < self.clip_len:
            raise ParameterError(f"motion_patch: the lag must be in [1, clip_len) frames, got {self.lag_frames}")
        if not 0.0 < self.patch_frac <= 1.0:
            raise ParameterError(f"motion_patch: patch_frac must be in (0, 1], got {self.patch_frac}")
        if not 1 <= self.patch <= min(self.height, self.width):
            raise ParameterError(f"motion_patch: the patch must be in [1, {min(self.height, self.width)}] px, got {self.patch}")
        if self.statistic not in STATISTICS:
            raise ParameterError(f"motion_patch: statistic must be one of {STATISTICS}, got {self.statistic!r}")
        if not 0.0 < self.quantile < 1.0:
            raise ParameterError(f"motion_patch: quantile must be in (0, 1), got {self.quantile}")
        if not self.cell_prior >= 0.0:
            raise ParameterError(f"motion_patch: cell_prior must be >= 0, got {self.cell_prior}")
        if len(self.embed_grid) != 2 or min(self.embed_grid) < 1:
            raise ParameterError(f"motion_patch: embed_grid must be two positive sizes, got {self.embed_grid}")

    @property
    def lag_frames(self) -> int:
        """The lag in frames: `lag`, or `lag_s` at `fps` rounded half up, at least 1."""
        return self.lag or to_frames(self.lag_s, self.fps, minimum=1)

    @property
    def patch(self) -> int:
        """The patch side in px: `score_patch`, or `patch_frac` of the height rounded half up."""
        return self.score_patch or to_pixels(self.patch_frac, self.height)

    @property
    def grid(self) -> tuple[int, int]:
        """(gh, gw): patch cells per frame."""
        p = self.patch
        s = max(1, p // 2)
        return (self.height - p) // s + 1, (self.width - p) // s + 1


class MotionPatch(ClipModel):
    arch = "motion_patch"
    role = "small"
    config_class = MotionPatchConfig
    value_range = (0.0, 1.0)
    fitted = True
    native_size = True
    gray_only = True
    # fitted and compared on the validation set by `vad train` (tasks/learning/selection.py); first the default
    VARIANTS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {}, "minus_q": {"statistic": "minus_q"}, "z": {"statistic": "z"}, "ratio_q": {"statistic": "ratio_q"},
    }

    def __init__(self, config: MotionPatchConfig) -> None:
        super().__init__(config)
        gh, gw = config.grid
        self.register_buffer("cell_mean", torch.zeros(gh, gw))
        self.register_buffer("cell_q", torch.zeros(gh, gw))
        self.register_buffer("cell_spread", torch.ones(gh, gw))
        self.register_buffer("energy_scale", torch.ones(()))
        self.register_buffer("frame_scale", torch.ones(()))
        self.register_buffer("is_fitted", torch.zeros((), dtype=torch.bool))

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        if "cell_spread" not in state_dict:  # a checkpoint from before the "z" statistic
            state_dict = {**state_dict, "cell_spread": torch.ones_like(self.cell_spread)}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, H, W) -> (B, T, gh, gw) mean |x_t - x_{t-lag}| per patch."""
        b, _, t, h, w = x.shape
        lag, p = self.config.lag_frames, self.config.patch
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
        if stat == "z":
            return (e - self.cell_mean) / self.cell_spread
        if stat == "ratio_q":
            return e / self.cell_spread  # `fit` keeps the quantile denominator r(i, j) there
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
        return self.score_features(self.energy(x.float()))

    # Per-frame work once (`tasks/runtime/passes.py`): a pass over overlapping clips finds the energy
    # of each frame of a span of frames once, and gathers each clip's rows from it; the scores are
    # those of `score` on the clip alone, since a frame's energy depends only on it and `lag` before.
    def frame_features(self, x: torch.Tensor) -> torch.Tensor:  # (1, 1, L, H, W) span -> (L, gh, gw)
        return self.energy(x.float())[0]

    def stored_frame_features(self, frames: np.ndarray) -> torch.Tensor:  # uint8 (L, H, W, C) -> (L, gh, gw)
        """`frame_features` of stored frames at the model's size, on a CPU with OpenCV, frame by frame
        (each frame's arrays stay in the cache): the luma of RGB frames as `prepare_clips` takes it,
        |x_t - x_{t-lag}| (exact in uint8 for gray frames) and the windows' sums: for an even patch from
        the means of its four half-patch blocks (OpenCV's area resize), else from an integral image in
        float64. The same energies up to float rounding, several times faster."""
        lag, p = self.config.lag_frames, self.config.patch
        s = max(1, p // 2)
        (gh, gw), n = self.config.grid, len(frames)
        rgb = frames.shape[-1] == 3
        weights = np.asarray(LUMA, np.float32)[None] / np.float32(255.0)  # (1, 3): scaled as prepare_clips
        out = np.empty((n, gh, gw), np.float64)
        gray = [None] * n
        halves = p == 2 * s  # an even patch is 2 x 2 blocks of s x s: block means, then 4 of them added
        for t in range(n):
            gray[t] = cv2.transform(frames[t].astype(np.float32), weights) if rgb else frames[t, :, :, 0]
            if t >= lag:
                diff = cv2.absdiff(gray[t], gray[t - lag])
                if halves:
                    part = diff[: s * (gh + 1), : s * (gw + 1)].astype(np.float32, copy=False)  # an area resize of uint8 rounds
                    block = cv2.resize(part, (gw + 1, gh + 1), interpolation=cv2.INTER_AREA).astype(np.float64) * (s * s)
                    out[t] = block[:-1, :-1] + block[1:, :-1] + block[:-1, 1:] + block[1:, 1:]  # (gh + 1, gw + 1) sums of s x s
                else:
                    ii = cv2.integral(diff, sdepth=cv2.CV_64F)  # (H+1, W+1)
                    hi, lo = slice(p, p + s * gh, s), slice(0, s * gh, s)
                    hj, lj = slice(p, p + s * gw, s), slice(0, s * gw, s)
                    out[t] = ii[hi, hj] - ii[lo, hj] - ii[hi, lj] + ii[lo, lj]
                gray[t - lag] = None
        out[:lag] = out[lag] if n > lag else 0.0
        return torch.from_numpy(out.astype(np.float32)).div_(p * p * (1.0 if rgb else 255.0))

    @property
    def frame_lookback(self) -> int:  # frames before a frame that its features read
        return self.config.lag_frames

    def clip_rows(self) -> torch.Tensor:  # (T,): the span rows of a clip's frames, from its first
        return torch.arange(self.config.clip_len).clamp_min_(self.config.lag_frames)

    @torch.inference_mode()
    def score_features(self, e: torch.Tensor) -> ClipScores:  # (B, T, gh, gw) energies -> ClipScores
        frames = self.statistic(e).flatten(2).amax(dim=2)  # (B, T)
        uncertainty = frames.std(dim=1) / self.frame_scale  # (B,)
        return ClipScores(clip=frames.mean(dim=1), frames=frames, embedding=self.embed(e, frames), uncertainty=uncertainty)

    @torch.inference_mode()
    def fit(self, clips: Iterable[torch.Tensor]) -> dict[str, float]:
        """Fit the buffers from normal clips, each (B, 1, T, H, W) in [0, 1] (as `prepare_clips` gives),
        streamed once in bounded memory: per cell float64 sums of the energies and their squares and
        (for "minus_q", "ratio_q") a histogram of them.

        Every clip frame's patch energies count (frames covered by two clips count twice, as in scoring).
        `cell_q` is read from the histogram (`BINS` bins over [0, 1]: within half a bin of the exact
        quantile); the frame-score scale from float64 moments ("raw") or, for the statistics that need
        the fitted levels, from a seeded uniform sample of `FRAME_SAMPLE` frames.
        """
        gh, gw = self.config.grid
        cells, dev = gh * gw, self.cell_mean.device
        n, moments = 0, [0.0, 0.0]
        total, total_sq = torch.zeros(2, cells, dtype=torch.float64, device=dev)
        stat = self.config.statistic
        quantiles = stat in ("minus_q", "ratio_q")  # only they read `cell_q` (else 0)
        hist = torch.zeros(cells * BINS if quantiles else 0, dtype=torch.int64, device=dev)
        offset = torch.arange(cells, device=dev) * BINS
        sample = Reservoir(FRAME_SAMPLE, seed=0)
        for x in clips:
            e = self.energy(x.float()).flatten(0, 1).flatten(1)  # (B*T, cells)
            n += len(e)
            total += e.sum(dim=0, dtype=torch.float64)
            total_sq += e.double().square().sum(dim=0)
            if quantiles:
                bins = e.mul(BINS).long().clamp_(0, BINS - 1).add_(offset)
                hist += torch.bincount(bins.flatten(), minlength=cells * BINS)
            if self.config.statistic == "raw":
                f = e.amax(dim=1).double()
                moments[0] += float(f.sum())
                moments[1] += float(f.square().sum())
            else:
                sample.add(e=e.cpu().numpy())
        if n == 0:
            raise ParameterError("motion_patch: no normal clips to fit on")
        self.cell_mean.copy_((total / n).view(gh, gw))
        if quantiles:
            self.cell_q.copy_(histogram_quantile(hist.view(cells, BINS), self.config.quantile).view(gh, gw))
        prior = self.config.cell_prior
        if stat == "z":
            var = ((total_sq - total * total / n) / max(n - 1, 1)).clamp_min(0.0)
            self.cell_spread.copy_((var + prior * var.mean()).sqrt().clamp_min(SPREAD_FLOOR).view(gh, gw))
        elif stat == "ratio_q":
            self.cell_spread.copy_((self.cell_q + prior * self.cell_q.mean()).clamp_min(SPREAD_FLOOR))
        self.energy_scale.copy_((total.sum() / (n * cells)).clamp_min(1e-6))
        if self.config.statistic == "raw":
            s1, s2 = moments
            var = (s2 - s1 * s1 / n) / (n - 1) if n > 1 else 0.0
        else:
            e = torch.from_numpy(sample.rows()["e"]).to(dev).view(-1, gh, gw)
            f = self.statistic(e).flatten(1).amax(dim=1).double()
            var = float(f.var()) if len(f) > 1 else 0.0
        self.frame_scale.copy_(torch.tensor(max(var, 0.0) ** 0.5).clamp_min(1e-6))
        self.is_fitted.fill_(True)
        return {"frames": float(n), "mean_energy": float(self.energy_scale)}


def histogram_quantile(hist: torch.Tensor, q: float) -> torch.Tensor:
    """(C, BINS) counts of values in [0, 1] -> (C,) their `q` quantile, interpolated between the
    neighbouring order statistics as `torch.quantile` does, each read as its bin's centre."""
    n = int(hist[0].sum())
    rank = q * (n - 1)
    lo = math.floor(rank)
    cum = hist.cumsum(dim=1)
    at = torch.tensor([[lo, min(lo + 1, n - 1)]], device=hist.device).expand(len(hist), 2).contiguous()
    value = (torch.searchsorted(cum, at, right=True).double() + 0.5) / hist.shape[1]  # (C, 2)
    return (value[:, 0] + (rank - lo) * (value[:, 1] - value[:, 0])).float()
