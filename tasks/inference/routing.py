"""The router: which clips the large model re-scores, from four signals and a budget.

Signals, per clip, all levels from the small model's calibration on normal data:
- `gray_zone`: the gray distance of the clip from the threshold (the calibration quantile q, 0.95
  by default) is below `margin`: the small model is near its own decision boundary. The distance is
  measured on one of two `band` scales:
  - "rank" (default): |calibrated - q|, in percentile space. Its upper side is only 1 - q wide, so
    every clip above q - margin is in the zone, the surest anomalies included;
  - "odds": |log((1 - calibrated) / (1 - q))| / log(1 / (1 - q)): how many times rarer or more common
    among normal clips than the threshold the clip is, on a log scale, 0 at the threshold and 1 at a
    calibrated score of 0 (20 times more common at q = 0.95) or of 1 - (1 - q)^2 (20 times rarer).
    The zone is symmetric in those factors: margin 0.25 is a factor 2.1 either way (0.89 to 0.976);
- `ood`: the cosine distance of the clip's embedding from the normal centroid is above the
  distance that `ood_quantile` of normal clips stay under;
- `unstable`: the variance of the last `window` calibrated scores of the same video (this clip
  included) is above the level `instability_quantile` of normal windows stay under;
- `scene_cut`: a scene cut falls inside the clip.

Budgets:
- **token bucket** (per video, in stream order): the bucket starts full with `capacity` tokens; a
  clip whose signals fire takes a token and is escalated if one is there, else it is held back;
  after each clip `refill` tokens are added, up to the capacity;
- **batch budget**: the `fraction` of clips with the highest difficulty are escalated, where
  difficulty = number of signals fired + (1 - min(gray distance, 1)), so clips with more
  signals come first and, among equals, those nearest the threshold.

`ROUTERS` declares the router settings `vad train` chooses among on the camera's validation set,
together with the fusion rule (`tasks/evaluation/choices.py`); a run uses the large checkpoint's
choice unless router settings are given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import Field
from vad.tasks.runtime.calibration import Calibration, window_variances

from vad.errors import ParameterError

Signal = Literal["gray_zone", "ood", "unstable", "scene_cut"]
SIGNALS: tuple[str, ...] = get_args(Signal)
Band = Literal["rank", "odds"]
BANDS: tuple[str, ...] = get_args(Band)


# The limits below are also in the annotations (`Field`), so that the JSON schema of a flow's
# parameters carries them and a Prefect server refuses a deployment run out of range when it is
# created, not when a worker starts it; `__post_init__` checks objects built directly.
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
OpenFraction = Annotated[float, Field(gt=0.0, lt=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]


@dataclass(frozen=True)
class RouterConfig:
    margin: Fraction = 0.05
    ood_quantile: OpenFraction = 0.99
    instability_quantile: OpenFraction = 0.99
    signals: tuple[Signal, ...] = SIGNALS  # which signals may escalate
    band: Band = "rank"  # the scale of the gray distance (module docstring)

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin <= 1.0:
            raise ParameterError(f"gray-zone margin must be in [0, 1], got {self.margin}")
        if self.band not in BANDS:
            raise ParameterError(f"gray-zone band must be one of {', '.join(BANDS)}, got {self.band!r}")
        for name in ("ood_quantile", "instability_quantile"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ParameterError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        unknown = sorted(set(self.signals) - set(SIGNALS))
        if unknown:
            raise ParameterError(f"unknown signal(s) {unknown}; choose from {', '.join(SIGNALS)}")


    def record(self) -> dict[str, Any]:
        """The settings as run.json and the checkpoint's choice record keep them (JSON-able)."""
        return {"margin": self.margin, "ood_quantile": self.ood_quantile, "instability_quantile": self.instability_quantile,
                "signals": list(self.signals), "band": self.band}


def router_config(margin: float | None = None, ood_quantile: float | None = None, instability_quantile: float | None = None,
                  signals: str | list[str] | tuple[str, ...] | None = None, band: str | None = None) -> RouterConfig:
    """A router from the flat settings the CLI and the flows take, each None for its default:
    `signals` as names or one comma-separated string ("gray_zone,ood"; None: all four)."""
    if isinstance(signals, str):
        signals = [s.strip() for s in signals.split(",") if s.strip()]
    given = {"margin": margin, "ood_quantile": ood_quantile, "instability_quantile": instability_quantile,
             "signals": tuple(signals) if signals is not None else None, "band": band}
    return RouterConfig(**{k: v for k, v in given.items() if v is not None})  # type: ignore[arg-type]


def router_from_record(settings: dict[str, Any]) -> RouterConfig:
    """A router from `RouterConfig.record()`'s dict (or a part of it: the rest default)."""
    known = {f for f in RouterConfig.__dataclass_fields__}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ParameterError(f"unknown router setting(s) {unknown}; known: {', '.join(sorted(known))}")
    return router_config(**settings)


# The router settings `vad train` chooses among on validation (with the fusion rule); the first is
# the plain default. "odds" bands keep the surest anomalies (far above the threshold) out of the gray
# zone, so the budget goes to the clips the small model is unsure about on both sides of it;
# "gray zone only" ranks by nearness alone, with no out-of-distribution or instability signal.
ROUTERS: dict[str, dict[str, Any]] = {
    "default": {},
    "gray zone only": {"signals": ("gray_zone",)},
    "odds": {"band": "odds", "margin": 0.25},
    "odds, gray zone only": {"band": "odds", "margin": 0.25, "signals": ("gray_zone",)},
}


@dataclass(frozen=True)
class TokenBucket:
    capacity: NonNegative
    refill: NonNegative  # tokens added after each clip

    def __post_init__(self) -> None:
        if self.capacity < 0 or self.refill < 0 or not math.isfinite(self.capacity + self.refill):
            raise ParameterError(f"token bucket needs capacity >= 0 and refill >= 0, got {self.capacity}, {self.refill}")

    def describe(self) -> str:
        return f"bucket capacity {self.capacity:g}, refill {self.refill:g}/clip"


@dataclass(frozen=True)
class BatchBudget:
    fraction: Fraction

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ParameterError(f"budget must be a fraction in [0, 1], got {self.fraction}")

    def describe(self) -> str:
        return f"budget {self.fraction:g} of clips"


Budget = TokenBucket | BatchBudget


def parse_budget(budget: float | None = None, bucket: str | None = None) -> Budget:
    """`--budget FRACTION` or `--bucket CAPACITY,REFILL` (not both); neither gives a budget of 0.2."""
    if budget is not None and bucket is not None:
        raise ParameterError("give --budget or --bucket, not both")
    if bucket is not None:
        try:
            capacity, refill = (float(v) for v in bucket.split(","))
        except ValueError:
            raise ParameterError(f"--bucket must look like CAPACITY,REFILL (e.g. 3,0.2), got {bucket!r}") from None
        return TokenBucket(capacity, refill)
    return BatchBudget(0.2 if budget is None else float(budget))


@dataclass
class Signals:
    """Per-clip signal values and flags, arrays of length N in stream order."""

    gray_distance: np.ndarray  # distance from the threshold on the router's band scale (`gray_distance`)
    ood_distance: np.ndarray  # cosine distance to the normal centroid
    instability: np.ndarray  # window variance; NaN before a video has `window` clips
    flags: dict[str, np.ndarray]  # signal name -> bool (N,)

    @property
    def fired(self) -> np.ndarray:
        return np.any(np.stack(list(self.flags.values())), axis=0) if self.flags else np.zeros(len(self.gray_distance), bool)


def trailing_variance(calibrated: np.ndarray, video_ids: np.ndarray, window: int) -> np.ndarray:
    """Variance of each clip's last `window` calibrated scores within its video (NaN until full)."""
    out = np.full(len(calibrated), np.nan)
    for vid in dict.fromkeys(video_ids.tolist()):
        where = np.flatnonzero(video_ids == vid)
        v = window_variances(calibrated[where], window)
        out[where[window - 1 :]] = v
    return out


def gray_distance(calibrated: np.ndarray, quantile: float, band: str = "rank") -> np.ndarray:
    """Each clip's distance from the threshold `quantile` on the `band` scale (module docstring)."""
    calibrated = np.asarray(calibrated, dtype=np.float64)
    if band == "rank":
        return np.abs(calibrated - quantile)
    if band != "odds":
        raise ParameterError(f"gray-zone band must be one of {', '.join(BANDS)}, got {band!r}")
    tail = 1.0 - float(quantile)
    exceed = np.clip(1.0 - calibrated, tail * tail / 10, 1.0)  # a calibrated 1 stays finite, beyond the scale's 1
    return np.abs(np.log(exceed / tail)) / np.log(1.0 / tail)


def compute_signals(
    *, calibrated: np.ndarray, embeddings_distance: np.ndarray, video_ids: np.ndarray, scene_cut: np.ndarray,
    calibration: Calibration, config: RouterConfig,
) -> Signals:
    calibrated = np.asarray(calibrated, dtype=np.float64)
    video_ids = np.asarray(video_ids)
    gray = gray_distance(calibrated, calibration.quantile, config.band)
    ood = np.asarray(embeddings_distance, dtype=np.float64)
    instability = trailing_variance(calibrated, video_ids, calibration.window)
    ood_level = calibration.ood.quantile(config.ood_quantile)
    unstable_level = calibration.instability.quantile(config.instability_quantile)
    all_flags = {
        "gray_zone": gray < config.margin,
        "ood": ood > ood_level,
        "unstable": np.nan_to_num(instability, nan=-np.inf) > unstable_level,
        "scene_cut": np.asarray(scene_cut, dtype=bool),
    }
    return Signals(gray, ood, instability, {k: v for k, v in all_flags.items() if k in config.signals})


@dataclass
class Routing:
    escalated: np.ndarray  # bool (N,)
    held: np.ndarray  # bool (N,): a signal fired but the budget said no
    difficulty: np.ndarray  # (N,)
    reasons: list[str]  # fired signals, comma-joined ("" when none)


def difficulty(signals: Signals) -> np.ndarray:
    fired = sum(f.astype(np.float64) for f in signals.flags.values()) if signals.flags else 0.0
    return fired + (1.0 - np.minimum(signals.gray_distance, 1.0))


def route(signals: Signals, video_ids: np.ndarray, budget: Budget) -> Routing:
    """Apply a budget to the signals; clips are in stream order (video by video, clip by clip)."""
    n = len(signals.gray_distance)
    fired = signals.fired
    diff = difficulty(signals)
    escalated = np.zeros(n, dtype=bool)
    if isinstance(budget, TokenBucket):
        video_ids = np.asarray(video_ids)
        for vid in dict.fromkeys(video_ids.tolist()):
            tokens = budget.capacity
            for i in np.flatnonzero(video_ids == vid):
                if fired[i] and tokens >= 1.0:
                    escalated[i] = True
                    tokens -= 1.0
                tokens = min(budget.capacity, tokens + budget.refill)
    else:
        k = int(round(budget.fraction * n))
        # stable sort on -difficulty: ties go to the earlier clip
        escalated[np.argsort(-diff, kind="stable")[:k]] = True
    names = list(signals.flags)
    stacked = np.stack([signals.flags[k] for k in names], axis=1) if names else np.zeros((n, 0), bool)
    reasons = [",".join(name for name, on in zip(names, row) if on) for row in stacked]
    return Routing(escalated=escalated, held=fired & ~escalated, difficulty=diff, reasons=reasons)


FUSIONS: tuple[str, ...] = ("replace", "mean", "logit_mean")
_EPS = 1e-6


def check_fusion(rule: str) -> str:
    """`rule` if it is one of `FUSIONS`, else one clear error."""
    if rule not in FUSIONS:
        raise ParameterError(f"fusion must be one of {', '.join(FUSIONS)}, got {rule!r}")
    return rule


def fuse(rule: str, small: np.ndarray, large: np.ndarray) -> np.ndarray:
    """The final score of escalated clips (or frames) from both models' calibrated scores, each a
    percentile rank against its own model's normal data in (0, 1), so the two are on one scale:
    "replace" keeps the large model's score (the small one is dropped), "mean" averages the ranks,
    "logit_mean" averages their logits (clipped to (1e-6, 1 - 1e-6)) and maps back, which lets a
    model that is sure (a rank near 0 or 1) outweigh one that is unsure near the middle, as a product
    of odds would, with no parameter to learn."""
    check_fusion(rule)
    small, large = np.asarray(small, dtype=np.float64), np.asarray(large, dtype=np.float64)
    if rule == "replace":
        return large.copy()
    if rule == "mean":
        return (small + large) / 2
    s, g = (np.clip(x, _EPS, 1 - _EPS) for x in (small, large))
    z = (np.log(s / (1 - s)) + np.log(g / (1 - g))) / 2
    return 1 / (1 + np.exp(-z))


def router_record(router: RouterConfig | None) -> dict[str, Any] | None:
    return None if router is None else router.record()


def budget_record(budget: Budget) -> dict[str, Any]:
    if isinstance(budget, TokenBucket):
        return {"policy": "token-bucket", "capacity": budget.capacity, "refill": budget.refill}
    return {"policy": "batch", "fraction": budget.fraction}
