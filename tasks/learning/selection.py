"""Choosing among a model's declared variants (`ClipModel.VARIANTS`) on a validation store made from
the camera's own normal footage: each variant is fitted on the store's train split exactly as `vad
train` fits, scores the store's test split (normal videos with synthetic anomalies at known frames,
`tasks/evaluation/validation.py`), and the best micro AUC wins. Test labels of the real dataset never
enter: only the validation store is read.

The interval is a 95% bootstrap over videos (seeded, 200 resamples; the frames of the resampled
videos pooled). The plain default (the first variant) stays unless another variant's whole interval
lies above the default's AUC (`best`): validation sets are a few held-out videos with synthetic
anomalies, their intervals are wide (Ped2: about +-0.15), and picking the best point estimate moved
Ped2's test AUC from 0.954 to 0.882 routed (docs/quality.md), so a choice must rest on more than noise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from vad.models import DEFAULT_ARCH, model_class
from vad.storage import ClipStore
from vad.tasks.learning.train_config import TrainConfig
from vad.tasks.learning.training import train_model
from vad.tasks.runtime.checkpoint import load_checkpoint
from vad.tasks.runtime.passes import VideoPass, first_pass

from vad.errors import ParameterError

__all__ = ["RESAMPLES", "VariantResult", "best", "best_paired", "bootstrap_auc", "evaluate_variants", "paired_bootstrap", "selection_wanted",
           "variants_of"]

RESAMPLES = 200
LEVEL = 0.95


@dataclass
class VariantResult:
    """One variant's validation figures: micro AUC over the validation test frames and its interval."""

    name: str
    overrides: dict[str, Any]
    auc: float
    low: float
    high: float
    seconds: float = 0.0  # fit + calibration + scoring of the validation test split
    checkpoint: str = ""  # the variant as fitted on the validation store
    passes: list[VideoPass] = field(default_factory=list, repr=False, compare=False)  # its pass over the test videos

    def to_dict(self) -> dict[str, Any]:
        """The record kept in the checkpoint (JSON-able; no passes)."""
        return {"name": self.name, "overrides": dict(self.overrides), "auc": self.auc, "low": self.low,
                "high": self.high, "seconds": self.seconds}


def variants_of(arch: str) -> dict[str, dict[str, Any]]:
    """The architecture's declared variants, in order (the first is its plain default, `{}`)."""
    variants = dict(getattr(model_class(arch), "VARIANTS", None) or {"default": {}})
    first = next(iter(variants.values()))
    if first:
        raise ParameterError(f"{arch}: the first of VARIANTS must be the plain default {{}}, got {first}")
    return variants


def selection_wanted(config: TrainConfig) -> bool:
    """Whether `vad train` chooses for this config: the role's default architecture and no `--set`
    options (settings given by hand are kept as given). `--variant` still runs the rest (the fusion)."""
    return config.arch == DEFAULT_ARCH[config.role] and not config.model


def frame_scores(p: VideoPass, clip_len: int) -> np.ndarray:
    """(n_frames,) the mean calibrated score of the clips covering each frame; frames after the last
    clip take the last covered value (as `tasks/inference/scoring.aggregate_frames`)."""
    total, count = np.zeros(p.n_frames), np.zeros(p.n_frames)
    rows = (p.starts[:, None] + np.arange(clip_len)[None, :]).ravel()
    keep = rows < p.n_frames
    np.add.at(total, rows[keep], np.repeat(p.out.calibrated, clip_len)[keep])
    np.add.at(count, rows[keep], 1)
    covered = np.flatnonzero(count)
    out = np.zeros(p.n_frames)
    out[covered] = total[covered] / count[covered]
    out[covered[-1] + 1 :] = out[covered[-1]]
    return out


def rank_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of binary `labels` (0/1, both present) from `scores`, as the Mann-Whitney statistic
    with tied scores at their average rank: the value scikit-learn's `roc_auc_score` gives, without
    its input checks, which took over 90% of a 200-draw paired bootstrap's time (`vad train`'s
    router and fusion choice: 7,841 calls, 110 of 160 s in a profile of tests/test_selection.py)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, float)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be one matching row")
    if not np.isfinite(s).all():
        raise ValueError("scores hold NaN or infinity")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("the AUC needs both classes")
    order = np.argsort(s, kind="stable")
    ordered = s[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # the first of each run of ties
    ends = np.r_[starts[1:], len(s)]
    ranks = np.empty(len(s))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # 1-based average rank of a run
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def bootstrap_auc(labels: list[np.ndarray], scores: list[np.ndarray], *, seed: int = 0,
                  resamples: int = RESAMPLES, level: float = LEVEL) -> tuple[float, float, float]:
    """Micro AUC of the pooled frames of the videos given (labels < 0 left out), and its `level`
    bootstrap interval: videos drawn with replacement, their frames pooled; a draw with one class
    only is drawn again (up to `resamples` more times). (nan, nan, nan) without both classes."""
    pairs = [(np.asarray(y), np.asarray(s, float)) for y, s in zip(labels, scores)]
    pairs = [(y[y >= 0], s[y >= 0]) for y, s in pairs]

    def auc(idx: np.ndarray) -> float:
        y = np.concatenate([pairs[i][0] for i in idx])
        if y.min(initial=1) == y.max(initial=0):
            return float("nan")
        return rank_auc(y, np.concatenate([pairs[i][1] for i in idx]))

    point = auc(np.arange(len(pairs)))
    if not np.isfinite(point):
        return point, point, point
    rng = np.random.default_rng(seed)
    draws: list[float] = []
    for _ in range(2 * resamples):
        if len(draws) == resamples:
            break
        value = auc(rng.integers(0, len(pairs), len(pairs)))
        if np.isfinite(value):
            draws.append(value)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail]) if draws else (point, point)
    return point, float(low), float(high)


def paired_bootstrap(labels: list[np.ndarray], candidates: list[list[np.ndarray]], *, seed: int = 0,
                     resamples: int = RESAMPLES, level: float = LEVEL) -> list[dict[str, float]]:
    """Micro AUC of each candidate's frame scores (per video, as `bootstrap_auc` takes them) over the
    same videos, its `level` interval, and its gain over the first candidate with that gain's interval,
    all from the same draws of videos: candidates that differ only in a few clips (another router, a
    fusion rule) differ far less than either's interval, and a paired draw sees it. A draw with one
    class only is drawn again (up to `resamples` more times); nan without both classes."""
    keep = [np.asarray(y) >= 0 for y in labels]
    ys = [np.asarray(y)[k] for y, k in zip(labels, keep)]
    cands = [[np.asarray(s, float)[k] for s, k in zip(c, keep)] for c in candidates]

    def aucs(idx: np.ndarray) -> np.ndarray | None:
        y = np.concatenate([ys[i] for i in idx])
        if y.min(initial=1) == y.max(initial=0):
            return None
        return np.array([rank_auc(y, np.concatenate([c[i] for i in idx])) for c in cands])

    point = aucs(np.arange(len(ys)))
    if point is None:
        return [dict.fromkeys(("auc", "low", "high", "gain", "gain_low", "gain_high"), float("nan")) for _ in candidates]
    rng = np.random.default_rng(seed)
    draws: list[np.ndarray] = []
    for _ in range(2 * resamples):
        if len(draws) == resamples:
            break
        value = aucs(rng.integers(0, len(ys), len(ys)))
        if value is not None:
            draws.append(value)
    tail = (1 - level) / 2 * 100
    table = np.stack(draws) if draws else point[None, :]
    low, high = np.percentile(table, [tail, 100 - tail], axis=0)
    gain_low, gain_high = np.percentile(table - table[:, :1], [tail, 100 - tail], axis=0)
    return [{"auc": float(point[i]), "low": float(low[i]), "high": float(high[i]), "gain": float(point[i] - point[0]),
             "gain_low": float(gain_low[i]), "gain_high": float(gain_high[i])} for i in range(len(candidates))]


def score_validation(val_store_url: str, checkpoint_path: str | Path) -> list[VideoPass]:
    """The checkpoint's pass over every test video of the validation store (its synthetic anomalies)."""
    ck = load_checkpoint(checkpoint_path)
    ids = ClipStore.open(val_store_url).video_ids(split="test")
    if not ids:
        raise ParameterError(f"validation store {val_store_url} has no test videos")
    return [first_pass(val_store_url, ck, vid) for vid in ids]


def pass_auc(passes: list[VideoPass], clip_len: int, *, seed: int = 0, resamples: int = RESAMPLES) -> tuple[float, float, float]:
    """`bootstrap_auc` of the frame scores of these passes."""
    return bootstrap_auc([p.labels for p in passes], [frame_scores(p, clip_len) for p in passes], seed=seed, resamples=resamples)


def best(results: list[VariantResult]) -> VariantResult:
    """The first entry (the plain default) unless validation is sure another is better: a variant
    replaces it only when its whole interval lies above the default's AUC; among those, the highest
    AUC (an exact tie keeps the earlier). A default without a finite AUC gives way to the best finite."""
    default = results[0]
    if not np.isfinite(default.auc):
        finite = [r for r in results[1:] if np.isfinite(r.auc)]
        return max(finite, key=lambda r: r.auc) if finite else default
    sure = [r for r in results[1:] if np.isfinite(r.auc) and r.low > default.auc]
    return max(sure, key=lambda r: r.auc) if sure else default


def best_paired(rows: list[dict[str, float]]) -> int:
    """The index of the row `paired_bootstrap` figures favour: the first (the plain default) unless
    another's whole gain interval over it lies above 0; among those, the highest AUC (an exact tie
    keeps the earlier)."""
    sure = [i for i, row in enumerate(rows) if i and np.isfinite(row["gain_low"]) and row["gain_low"] > 0]
    return max(sure, key=lambda i: (rows[i]["auc"], -i)) if sure else 0


def evaluate_variants(
    val_store_url: str, arch: str, role: str, variants: dict[str, dict[str, Any]] | None = None,
    base_config: TrainConfig | None = None, *, out_dir: str | Path | None = None, seed: int = 0,
    resamples: int = RESAMPLES, log: Callable[[str], None] | None = None, split_name: str = "validation",
) -> list[VariantResult]:
    """Fit each variant of `arch` (`variants`: name -> config overrides, default `variants_of(arch)`)
    on the validation store's train split with `train_model` (what `vad train` runs, from
    `base_config` with the variant's overrides on its `model` settings), score the store's test split
    once, and return every variant's micro AUC with its bootstrap interval (seeded by `seed`), in the
    order given. Checkpoints go to `out_dir` (default: a `checkpoints` folder beside the store); `log`
    gets one line per variant, its figure called `split_name`'s."""
    say = log or (lambda _msg: None)
    variants = variants if variants is not None else variants_of(arch)
    if not variants:
        raise ParameterError(f"{arch}: no variants to evaluate")
    base = base_config or TrainConfig(role=role, arch=arch)
    folder = Path(out_dir) if out_dir is not None else Path(str(val_store_url)).parent / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for name, overrides in variants.items():
        t0 = time.perf_counter()
        config = replace(base, role=role, arch=arch, model={**base.model, **overrides})
        path = folder / f"{role}-{arch}-{name}.pt"
        train_model(val_store_url, path, config, overwrite=True, resume=False)
        passes = score_validation(val_store_url, path)
        auc, low, high = pass_auc(passes, config.clip_len, seed=seed, resamples=resamples)
        result = VariantResult(name, dict(overrides), auc, low, high, time.perf_counter() - t0, str(path), passes)
        say(f"  variant {arch}/{name}: {split_name} micro AUC {auc:.3f} [{low:.3f}, {high:.3f}] ({result.seconds:.0f} s)")
        results.append(result)
    return results
