"""Training on normal clips: the plan (store, input geometry, held-out split) checked before
anything starts, then Adam with plateau decay, early stopping and a resumable state for a network,
or `fit_model` for a fitted model; both end calibrated on the held-out clips.

Only the train split is read; the held-out split is `tasks/learning/split.py`'s. The parts live by
concern: `train_config.py` (the config, `--set` options, the result), `split.py`, `epochs.py` (loaders,
one epoch, the held-out loss, the resume key), `fitting.py` (calibration, the checkpoint, fitted
models). The names other modules use are imported from here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from vad.models import make_config, model_class, trainable_parameters
from vad.storage import ClipStore, Video, clip_windows
from vad.tasks.runtime.compute import available_cores, pick_device
from vad.tasks.runtime.checkpoint import atomic_torch_save, dataset_fingerprint
from vad.tasks.learning.distill import ScoreTeacher, check_student
from vad.tasks.learning.epochs import (
    Distillation,
    EpochShuffle,
    Progress,
    PseudoTraining,
    evaluate_loss,
    make_loader,
    resume_key,
    seed_everything,
    state_path,
    train_epoch,
)
from vad.tasks.learning.fitting import FIT_THREADS, fit_model, save_calibrated, torch_threads
from vad.tasks.runtime.model_input import InputSpec
from vad.tasks.learning.pseudo import PseudoAnomalyHead
from vad.tasks.learning.split import Fold, Split, calibration_folds, out_of_fold, split_clips
from vad.tasks.learning.train_config import GEOMETRY, TrainConfig, TrainResult, parse_model_options

from vad.errors import ParameterError, PipelineError

__all__ = [
    "FIT_THREADS", "GEOMETRY", "EpochShuffle", "Split", "TrainConfig", "TrainResult", "TrainingPlan", "check_target",
    "evaluate_loss", "fit_model", "parse_model_options", "plan_training", "split_clips", "torch_threads",
    "train_model",
]


@dataclass
class TrainingPlan:
    store: ClipStore
    videos: list[Video]
    spec: InputSpec
    model_config: Any
    split: Split
    teacher: ScoreTeacher | None = None  # the distillation teacher, loaded on the CPU
    folds: list[Fold] | None = None  # out-of-fold calibration of a fitted model (`split.out_of_fold`); the split then holds every video

    def describe(self, config: TrainConfig) -> str:
        """One line: what is trained on what."""
        s = self.spec
        if self.folds is not None:
            return (f"fitting {config.arch} ({config.role}) on {self.store.dataset}: all {len(self.videos)} training videos, "
                    f"calibrated out of fold ({config.calibration_folds} folds, each scored by a fit on the others); "
                    f"input {s.clip_len}x{s.height}x{s.width}x{s.channels}")
        return (f"training {config.arch} ({config.role}) on {self.store.dataset}: {len(self.split.train_videos)} training "
                f"videos ({len(self.split.train)} clips), {len(self.split.val_videos)} held out ({len(self.split.val)} clips); "
                f"input {s.clip_len}x{s.height}x{s.width}x{s.channels}")


def check_target(out: str | Path, *, overwrite: bool = False) -> Path:
    """The checkpoint path, refused when a checkpoint is there and `overwrite` is off."""
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise ParameterError(f"checkpoint {out} already exists; pass overwrite (--force) to replace it")
    return out


def plan_training(store_url: str, out: str | Path, config: TrainConfig, *, overwrite: bool = False) -> TrainingPlan:
    """Everything that can be checked before training starts: the store, its training videos, the
    model's input geometry and the held-out split. Raises a `PipelineError` naming the problem."""
    out = check_target(out, overwrite=overwrite)
    store = ClipStore.open(store_url)
    videos = list(store.videos(split="train"))
    if not videos:
        raise PipelineError(f"store {store_url} has no complete training videos (split 'train'); ingest normal footage first")
    frame_sizes = {tuple(v.frames.shape[1:]) for v in videos}
    if len(frame_sizes) > 1:
        listing = ", ".join(f"{v.id} {v.frames.shape[1]}x{v.frames.shape[2]}x{v.frames.shape[3]}" for v in videos[:6])
        raise PipelineError(f"training videos of store {store_url} have different frame sizes ({listing}); ingest them with one --size")
    store_h, store_w, store_c = frame_sizes.pop()
    cls = model_class(config.arch)
    defaults = cls.config_class()
    # models that read frames as stored (`native_size`) default to the store's size, others to their own
    height, width = config.size or ((store_h, store_w) if cls.native_size else (defaults.height, defaults.width))
    # channels of None: the store's, except that a gray-only model takes the luma of colour frames
    channels = 3 if config.flow else (config.channels or (1 if cls.gray_only else store_c))
    spec = InputSpec(clip_len=config.clip_len, stride=config.stride, height=height, width=width, channels=channels,
                     motion=config.motion, flow=config.flow)
    # the store's frame rate, for models with settings in seconds (a `--set fps=` wins)
    fps = {"fps": float(videos[0].attrs["fps"])} if videos[0].attrs.get("fps") and "fps" in {f.name for f in fields(cls.config_class)} else {}
    model_cfg = make_config(
        config.arch, {**fps, **config.model, "in_channels": channels, "clip_len": config.clip_len, "height": height, "width": width}
    )
    model_cfg.validate()
    teacher = None
    if config.distill is not None:
        check_student(model_class(config.arch))
        teacher = ScoreTeacher.load(config.distill, spec, torch.device("cpu"))  # refuses a missing or mismatched teacher
    folds = calibration_folds(videos, config) if cls.fitted and out_of_fold(videos, config) else None
    if folds is not None:
        # out of fold: every video is fitted and calibrates (refused above when too short for the folds)
        cal = sorted(c for f in folds for c in f.clips)
        ids = sorted(v.id for v in videos)
        split = Split(train=[(v.id, s) for v in videos for s, _ in clip_windows(v.n_frames, config.clip_len, config.clip_len)],
                      val=cal, train_videos=ids, val_videos=sorted({v for v, _ in cal}),
                      train_frames={v.id: v.n_frames for v in videos})
    else:
        split = split_clips(videos, config)
    if len(split.train) < 2:
        raise PipelineError(f"only {len(split.train)} training clip fits in {split.train_videos}; batch normalisation needs two")
    longest = max(sum(1 for v, _ in split.val if v == vid) for vid in split.val_videos)
    if longest < config.window:
        need = config.clip_len + (config.window - 1) * config.stride
        raise PipelineError(
            f"calibration needs a held-out video of at least {config.window} clips ({need} frames at clip length "
            f"{config.clip_len} and stride {config.stride}); the held-out {split.val_videos} give at most {longest}. "
            "Lower --stride or --clip-len, or add longer training videos"
        )
    return TrainingPlan(store, videos, spec, model_cfg, split, teacher, folds)


def train_model(
    store_url: str, out: str | Path, config: TrainConfig, *, progress: bool = False, resume: bool = True,
    overwrite: bool = False, log: Callable[[str], None] | None = None, selection: dict[str, Any] | None = None,
) -> TrainResult:
    """Train `config.arch` on the store's normal training videos and write a calibrated checkpoint.

    Each epoch ends by saving the full training state beside `out` (`<out>.state`); a later call with
    the same config resumes from it. The checkpoint holds the weights of the epoch with the lowest
    held-out loss, calibrated on the held-out clips; the state file is removed when it is written.
    `selection` (JSON-able: what was chosen on validation, `tasks/evaluation/choices.py`) is recorded
    as the checkpoint's `training["selection"]`.
    """
    say = log or (lambda _msg: None)
    out = Path(out).expanduser()
    plan = plan_training(store_url, out, config, overwrite=overwrite)
    say(plan.describe(config))
    store, videos, spec, model_cfg, split = plan.store, plan.videos, plan.spec, plan.model_config, plan.split
    cls = model_class(config.arch)
    if cls.fitted:
        return fit_model(plan, config, store_url, out, progress=progress, log=say, selection=selection)

    seed_everything(config.seed)
    cores = available_cores()
    workers = config.workers if config.workers is not None else min(4, max(1, cores // 2))
    torch.set_num_threads(cores)
    device = pick_device(config.device)
    model = cls(model_cfg).to(device)
    pseudo = None
    parameters = list(model.parameters())
    if config.pseudo_weight > 0:
        # The head's width is the embedding's; one eval-mode pass on blank clips finds it (no
        # randomness drawn, no statistics changed).
        model.eval()
        with torch.no_grad():
            blank = torch.zeros(2, spec.channels, spec.clip_len, spec.height, spec.width, device=device)
            features = model(blank).embedding.shape[1]
        pseudo = PseudoTraining(PseudoAnomalyHead(features).to(device), config.pseudo_weight, torch.Generator())
        parameters += list(pseudo.head.parameters())
    distill = None
    if plan.teacher is not None:
        plan.teacher.model.to(device)
        distill = Distillation(plan.teacher, config.distill_weight)
    optimizer = torch.optim.Adam(parameters, lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=config.lr_patience)
    config_record = asdict(config)
    fingerprint = dataset_fingerprint(store.dataset, videos)

    start_epoch, best, best_epoch, best_state, history, bad, elapsed_before = 1, math.inf, 0, None, [], 0, 0.0
    resumed_from = None
    state_file = state_path(out)
    if resume and state_file.exists():
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        if resume_key(state.get("config") or {}) != resume_key(config_record) or state.get("fingerprint") != fingerprint:
            say(f"ignoring {state_file}: it was saved for other settings or data")
        else:
            model.load_state_dict(state["model"])
            if pseudo is not None:
                pseudo.head.load_state_dict(state["pseudo_head"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"])
            if state.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            start_epoch, best, best_epoch = state["epoch"] + 1, state["best"], state["best_epoch"]
            best_state, history, bad, elapsed_before = state["best_state"], state["history"], state["bad"], state["seconds"]
            resumed_from = state["epoch"]
            say(f"resuming from {state_file} after epoch {resumed_from}")

    # Training clips stream through worker processes; held-out clips are few and read in-process.
    sampler = EpochShuffle(len(split.train), config.seed)
    train_loader = make_loader(store_url, split.train, config, sampler=sampler, workers=workers)
    val_loader = make_loader(store_url, split.val, config, sampler=None, workers=0)
    flip_gen = torch.Generator().manual_seed(config.seed + 17)
    t0 = time.perf_counter()
    stopped = "epochs"
    if resumed_from is not None and bad >= config.patience:
        stopped = "early-stopping"
    for epoch in range(start_epoch, config.epochs + 1):
        if stopped == "early-stopping":
            break
        bar = Progress(progress, math.ceil(len(split.train) / config.batch), f"{config.arch} epoch {epoch}/{config.epochs}")
        flip_gen.manual_seed(config.seed + 17 + epoch)
        sampler.set_epoch(epoch)
        if pseudo is not None:
            pseudo.gen.manual_seed(config.seed + 29 + epoch)
        train_loss, extras = train_epoch(
            model, train_loader, spec, optimizer, device, flip_gen if config.flip else None, bar, pseudo, distill
        )
        bar.close()
        val = evaluate_loss(model, val_loader, spec, device)
        if not math.isfinite(val):
            raise PipelineError(f"training {config.arch} diverged (held-out loss {val}) at epoch {epoch}; lower --lr")
        scheduler.step(val)
        improved = val < best - config.min_delta
        if improved:
            best, best_epoch, bad = val, epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        seconds = elapsed_before + time.perf_counter() - t0
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val, "lr": optimizer.param_groups[0]["lr"], "seconds": seconds})
        history[-1].update(extras)
        told = ""
        if "pseudo_accuracy" in extras:
            told += f", pseudo-anomalies told apart {extras['pseudo_accuracy']:.0%}"
        if "teacher_correlation" in extras:
            told += f", frame scores' correlation with the teacher {extras['teacher_correlation']:.2f}"
        say(f"epoch {epoch}: train loss {train_loss:.5f}, held-out loss {val:.5f}{' (best)' if improved else ''}{told}")
        atomic_torch_save({
            "config": config_record, "fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
            "pseudo_head": pseudo.head.state_dict() if pseudo is not None else None,
            "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
            "best": best, "best_epoch": best_epoch, "best_state": best_state, "history": history, "bad": bad,
            "seconds": seconds,
        }, state_file)
        if bad >= config.patience:
            stopped = "early-stopping"
            break
        if config.max_minutes is not None and seconds >= config.max_minutes * 60:
            stopped = "time-limit"
            break

    if best_state is None:  # resumed a state whose run had already ended
        raise PipelineError(f"{state_file} holds no trained weights; delete it and train again")
    model.load_state_dict(best_state)
    seconds = elapsed_before + time.perf_counter() - t0
    training = {
        "config": config_record, "train_videos": split.train_videos, "val_videos": split.val_videos,
        "train_clips": len(split.train), "val_clips": len(split.val), "history": history,
        "best_epoch": best_epoch, "best_val_loss": best, "stopped": stopped, "seconds": seconds,
        "teacher": None if distill is None else {"path": distill.teacher.path, "arch": distill.teacher.arch},
        "device": str(device), "threads": cores, "workers": workers, "parameters": trainable_parameters(model),
        **({"selection": selection} if selection is not None else {}),
    }
    save_calibrated(plan, config, store_url, out, best_state, training, device)
    state_file.unlink(missing_ok=True)
    return TrainResult(
        checkpoint=out, arch=config.arch, role=config.role, parameters=trainable_parameters(model),
        best_val_loss=best, best_epoch=best_epoch, epochs_run=len(history), seconds=seconds, stopped=stopped,
        train_clips=len(split.train), val_clips=len(split.val), resumed_from=resumed_from, device=str(device),
    )
