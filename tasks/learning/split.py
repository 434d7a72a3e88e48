"""The held-out split of the training videos: whole videos held out for validation and calibration
(clips of one video are nearly copies of each other, so a random clip split would validate on the
training data); a dataset of a single training video is split in time instead, its last
`val_fraction` of frames held out.

A fitted model (no gradient steps) is calibrated out of fold instead (`calibration_folds`): the
training videos are dealt into `calibration_folds` folds (a seeded shuffle, then round robin; a lone
video is cut into that many equal runs of frames), each fold is scored by the model fitted on the
other folds, and the final model is fitted on all of the footage. The calibration then sees every
normal video, not the few a held-out split leaves: with 3 of UCSD Ped2's 16 training videos held
out, the threshold came from the three calmest ones. Footage longer than `fold_max_s` (30 min by
default) keeps the held-out split (`out_of_fold`): its held-out fifth is then at least 6 minutes,
and the extra fits and the scoring of all of it would cost more than the fit itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vad.storage import Video, clip_windows

from vad.errors import PipelineError

if TYPE_CHECKING:
    from vad.tasks.learning.train_config import TrainConfig


@dataclass(frozen=True)
class Split:
    """Training and held-out clips as (video id, start frame), the videos of each in order, and
    how many leading frames of each training video the training part holds (all of them, except
    for a lone video split in time). Held-out clips are at the scoring stride, in stream order:
    calibration scores them."""

    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    train_videos: list[str]
    val_videos: list[str]
    train_frames: dict[str, int]  # video -> frames [0, n) that are training footage

    def fit_index(self, clip_len: int) -> list[tuple[str, int]]:
        """Every training frame once, in video order: clips side by side (stride = clip length)."""
        return [(vid, s) for vid in self.train_videos for s, _ in clip_windows(self.train_frames[vid], clip_len, clip_len)]


@dataclass(frozen=True)
class Fold:
    """One fold of out-of-fold calibration: the footage its model is fitted on, as (video, first,
    end) frame runs, and its own clips (at the scoring stride, stream order) that the model scores."""

    fit_runs: list[tuple[str, int, int]]
    clips: list[tuple[str, int]]

    def fit_index(self, clip_len: int) -> list[tuple[str, int]]:
        """Every frame of the fit runs once, clips side by side (as `Split.fit_index`)."""
        return [(vid, lo + s) for vid, lo, hi in self.fit_runs for s, _ in clip_windows(hi - lo, clip_len, clip_len)]


NOMINAL_FPS = 25.0  # the frame rate assumed for footage that records none (frame folders)


def footage_seconds(videos: list[Video]) -> float:
    """Seconds of footage in `videos`, at each video's stored frame rate (`NOMINAL_FPS` without one)."""
    return sum(v.n_frames / float(v.attrs.get("fps") or NOMINAL_FPS) for v in videos)


def out_of_fold(videos: list[Video], config: TrainConfig) -> bool:
    """Whether a fitted model is calibrated out of fold: `calibration_folds` > 1 and the footage at
    most `fold_max_s` seconds long."""
    return config.calibration_folds > 1 and footage_seconds(videos) <= config.fold_max_s


def calibration_folds(videos: list[Video], config: TrainConfig) -> list[Fold]:
    """The folds of out-of-fold calibration (see the module docstring); folds without a whole clip
    are dropped. A `PipelineError` when fewer than two folds remain."""
    ids = sorted(v.id for v in videos)
    n_frames = {v.id: v.n_frames for v in videos}
    t, k = config.clip_len, config.calibration_folds
    if len(ids) >= 2:
        order = ids[:]
        random.Random(config.seed).shuffle(order)
        k = min(k, len(ids))
        groups = [sorted(order[i::k]) for i in range(k)]
        runs = [[(vid, 0, n_frames[vid]) for vid in g] for g in groups]
    else:
        n = n_frames[ids[0]]
        cuts = [round(i * n / k) for i in range(k + 1)]
        runs = [[(ids[0], cuts[i], cuts[i + 1])] for i in range(k)]
    folds = []
    for i, own in enumerate(runs):
        fit = [r for j, other in enumerate(runs) if j != i for r in other]
        clips = [(vid, lo + s) for vid, lo, hi in own for s, _ in clip_windows(hi - lo, t, config.stride)]
        if clips and any(hi - lo >= t for _, lo, hi in fit):
            folds.append(Fold(fit, clips))
    if len(folds) < 2:
        raise PipelineError(
            f"out-of-fold calibration needs two folds with a whole {t}-frame clip each; the training footage "
            f"({', '.join(ids)}) gives {len(folds)}. Add footage, lower --clip-len or set calibration_folds=1"
        )
    return folds


def split_clips(videos: list[Video], config: TrainConfig) -> Split:
    """Hold out whole videos (seeded choice), or the tail of a lone video; see the module docstring."""
    ids = sorted(v.id for v in videos)
    by_id = {v.id: v for v in videos}
    t = config.clip_len

    def windows(vid: str, stride: int, lo: int = 0, hi: int | None = None) -> list[tuple[str, int]]:
        n = (hi if hi is not None else by_id[vid].n_frames) - lo
        return [(vid, lo + s) for s, _ in clip_windows(n, t, stride)]

    if len(ids) >= 2:
        rng = random.Random(config.seed)
        n_val = min(len(ids) - 1, max(1, round(config.val_fraction * len(ids))))
        val_ids = sorted(rng.sample(ids, n_val))
        train_ids = [v for v in ids if v not in val_ids]
        train = [c for v in train_ids for c in windows(v, config.effective_train_stride)]
        val = [c for v in val_ids for c in windows(v, config.stride)]
        train_frames = {v: by_id[v].n_frames for v in train_ids}
    else:
        vid = ids[0]
        n = by_id[vid].n_frames
        cut = int(n * (1 - config.val_fraction))
        train_ids, val_ids = [vid], [vid]
        train = windows(vid, config.effective_train_stride, 0, cut)
        val = windows(vid, config.stride, cut, n)
        train_frames = {vid: cut}
    if not train:
        raise PipelineError(f"no training clip of {t} frames fits in the training videos {train_ids}")
    if not val:
        raise PipelineError(
            f"no held-out clip of {t} frames fits in {val_ids}; add training videos or lower --clip-len"
        )
    return Split(train, val, train_ids, val_ids, train_frames)
