"""The end of every training run: the calibration of the final state on the held-out clips and the
checkpoint; and the whole run of a fitted model (`ClipModel.fitted`: no gradient steps), calibrated
out of fold by default."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from vad.models import model_class, trainable_parameters
from vad.tasks.runtime.compute import Compute, available_cores, pick_device
from vad.tasks.runtime.passes import score_clips
from vad.tasks.runtime.calibration import Calibration
from vad.tasks.runtime.checkpoint import Checkpoint, dataset_fingerprint, save_checkpoint, source_spec
from vad.tasks.learning.epochs import Progress, make_loader, seed_everything
from vad.tasks.runtime.model_input import prepare_clips
from vad.tasks.learning.train_config import TrainConfig, TrainResult
from vad.tasks.records import package_versions

if TYPE_CHECKING:
    from vad.tasks.learning.training import TrainingPlan


# Torch threads of a fit (`fit_model`). Float sums split over threads round differently: the
# default large model's crop autoencoder fitted on the synthetic store with 2 threads got other
# weights (and a threshold 6e-5 lower) than with 1; motion_patch's fit was bit-identical. One thread
# makes the fitted figures the same on every machine with the same package versions and CPU kind.
FIT_THREADS = 1


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Torch's intra-op thread count set to `n` for a block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _checkpoint(plan: TrainingPlan, config: TrainConfig, store_url: str, state: dict[str, torch.Tensor],
                training: dict[str, Any]) -> Checkpoint:
    """The uncalibrated checkpoint of `state`."""
    return Checkpoint(
        arch=config.arch, role=config.role, model_config=plan.model_config.to_dict(), state_dict=state, input=plan.spec,
        source={**source_spec(plan.videos[0]), "store": store_url}, dataset=plan.store.dataset,
        fingerprint=dataset_fingerprint(plan.store.dataset, plan.videos), calibration=None, training=training,
        versions=package_versions(),
    )


def _calibration(config: TrainConfig, raw: np.ndarray, embedding: np.ndarray, frames: np.ndarray,
                 clips: list[tuple[str, int]]) -> Calibration:
    return Calibration.fit(scores=raw, embeddings=embedding, video_ids=[v for v, _ in clips], quantile=config.quantile,
                           window=config.window, frame_scores=frames)


def save_calibrated(plan: TrainingPlan, config: TrainConfig, store_url: str, out: Path, state: dict[str, torch.Tensor],
                    training: dict[str, Any], device: torch.device) -> Checkpoint:
    """The checkpoint of `state`, calibrated on the held-out clips by the pass that scores (the
    scoring rewrite of the model, at its precision), written to `out`."""
    checkpoint = _checkpoint(plan, config, store_url, state, training)
    cal = score_clips(checkpoint, store_url, plan.split.val, compute=Compute(device=str(device)))
    checkpoint.calibration = _calibration(config, cal.raw, cal.embedding, cal.frame_errors, plan.split.val)
    checkpoint.cache.clear()  # the scoring model built for calibration; scoring builds its own
    save_checkpoint(checkpoint, out)
    return checkpoint


def _fit_state(plan: TrainingPlan, config: TrainConfig, store_url: str, index: list[tuple[str, int]],
               device: torch.device, *, progress: bool, label: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], float, int]:
    """A model of `plan` fitted on the clips `index` (frames side by side): its state, the fit's
    record, seconds and trainable parameters."""
    seed_everything(config.seed)
    model = model_class(config.arch)(plan.model_config).to(device).eval()
    spec = plan.spec
    loader = make_loader(store_url, index, config, sampler=None, workers=0)
    bar = Progress(progress, len(loader), label)
    t0 = time.perf_counter()

    def clips() -> Iterator[torch.Tensor]:
        for frames in loader:
            yield prepare_clips(frames, spec, model.value_range, device=device)
            bar.update(len(frames), float("nan"))

    with torch_threads(FIT_THREADS):  # the same fitted state whatever the machine's core count
        record = model.fit(clips())
    bar.close()
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return state, record, time.perf_counter() - t0, trainable_parameters(model)


def fit_model(plan: TrainingPlan, config: TrainConfig, store_url: str, out: Path, *, progress: bool = False,
              log: Callable[[str], None] | None = None, selection: dict[str, Any] | None = None) -> TrainResult:
    """A fitted model (`ClipModel.fitted`): no gradient steps; `model.fit` sets its state from normal
    footage (every frame once, in order, as clips side by side). With `calibration_folds` > 1 (the
    default, up to `fold_max_s` of footage: `plan.folds`) the model is fitted on all of the training
    footage and calibrated out of fold: each fold scored by the model fitted on the other folds.
    Otherwise it is fitted on the split's training part and calibrated on its held-out clips, like a
    trained model. `epochs`, `lr` and the early-stopping settings do not apply."""
    say = log or (lambda _msg: None)
    cores = available_cores()
    torch.set_num_threads(cores)
    device = pick_device(config.device)
    t0 = time.perf_counter()
    t = plan.spec.clip_len
    folds = plan.folds
    # out of fold the split holds every video whole and the folds' clips calibrate; else its
    # training part is fitted and its held-out clips calibrate
    index, cal_clips = plan.split.fit_index(t), plan.split.val
    train_videos, val_videos = plan.split.train_videos, [] if folds is not None else plan.split.val_videos
    state, record, seconds, parameters = _fit_state(plan, config, store_url, index, device, progress=progress, label=f"{config.arch} fit")
    say(f"fitted {config.arch} on {len(index)} normal clips in {seconds:.1f} s")
    training = {
        "config": asdict(config), "train_videos": train_videos, "val_videos": val_videos,
        "train_clips": len(index), "val_clips": len(cal_clips),
        "history": [{"epoch": 0, "fit": True, "seconds": seconds, **record}], "best_epoch": 0,
        "best_val_loss": float("nan"), "stopped": "fitted", "seconds": seconds, "teacher": None,
        "device": str(device), "threads": cores, "workers": 0, "parameters": parameters,
        **({"selection": selection} if selection is not None else {}),
    }
    if folds is None:
        if config.calibration_folds > 1:
            training["calibration"] = {"folds": 1, "why": f"footage longer than fold_max_s={config.fold_max_s:g} s: a held-out split"}
        save_calibrated(plan, config, store_url, out, state, training, device)
    else:
        parts = []
        for k, fold in enumerate(folds):
            fold_state, _, fold_s, _ = _fit_state(plan, config, store_url, fold.fit_index(t), device, progress=progress,
                                               label=f"{config.arch} fold {k + 1}/{len(folds)}")
            scored = score_clips(_checkpoint(plan, config, store_url, fold_state, {}), store_url, fold.clips,
                                 compute=Compute(device=str(device)))
            parts.append((fold.clips, scored))
            own = {v for v, _ in fold.clips}
            say(f"calibration fold {k + 1}/{len(folds)}: {len(fold.clips)} clips of {len(own)} video(s) scored by a fit "
                f"on the other {len({v for v, _, _ in fold.fit_runs} - own) or 'frames'} ({fold_s:.1f} s)")
        rows = {c: (p.raw[i], p.embedding[i], p.frame_errors[i]) for clips, p in parts for i, c in enumerate(clips)}
        raw, emb, frames = (np.stack([rows[c][j] for c in cal_clips]) for j in range(3))
        training["calibration"] = {"folds": len(folds), "clips": len(cal_clips),
                                   "fold_videos": [sorted({v for v, _ in f.clips}) for f in folds]}
        checkpoint = _checkpoint(plan, config, store_url, state, training)
        checkpoint.calibration = _calibration(config, raw, emb, frames, cal_clips)
        save_checkpoint(checkpoint, out)
    seconds = time.perf_counter() - t0
    return TrainResult(
        checkpoint=out, arch=config.arch, role=config.role, parameters=training["parameters"],
        best_val_loss=float("nan"), best_epoch=0, epochs_run=0, seconds=seconds, stopped="fitted",
        train_clips=len(index), val_clips=len(cal_clips), resumed_from=None, device=str(device),
    )
