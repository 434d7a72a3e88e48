"""Training on normal clips: held-out videos, Adam with plateau decay, early stopping, resumable state,
and calibration of the best weights on the held-out clips.

Only the train split is read. Whole videos are held out for validation (clips of one video are
nearly copies of each other, so a random clip split would validate on the training data). A dataset
of a single training video is split in time instead: its last `val_fraction` of frames is held out.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from vad.models import (
    DEFAULT_ARCH,
    ClipModel,
    make_config,
    model_class,
    trainable_parameters,
)
from vad.storage import ClipStore, Video, clip_windows
from vad.tasks.inference.compute import (
    Compute,
    autocast_for,
    available_cores,
    pick_device,
)
from vad.tasks.inference.passes import score_clips
from vad.tasks.learning.calibration import Calibration
from vad.tasks.learning.checkpoint import (
    Checkpoint,
    atomic_torch_save,
    dataset_fingerprint,
    save_checkpoint,
    source_spec,
)
from vad.tasks.learning.distill import (
    ScoreTeacher,
    check_student,
    standardised_mismatch,
    student_frame_scores,
)
from vad.tasks.learning.model_input import ClipDataset, InputSpec, prepare_clips
from vad.tasks.learning.pseudo import PseudoAnomalyHead, pseudo_anomalies
from vad.tasks.records import package_versions

from vad.errors import ParameterError, PipelineError


@dataclass
class TrainConfig:
    """Every training choice, recorded in the checkpoint. `size`/`channels` of None take the
    architecture's default size and the store's channel count."""

    role: str = "small"
    arch: str | None = None  # None: DEFAULT_ARCH[role]
    epochs: int = 20
    batch: int = 8
    lr: float = 1e-3
    clip_len: int = 16
    stride: int = 8  # scoring and calibration stride
    train_stride: int | None = None  # None: stride // 2 (more, overlapping training clips)
    size: tuple[int, int] | None = None
    channels: int | None = None
    motion: bool = False  # the model sees frame differences (see InputSpec)
    flow: bool = False  # the model sees optical flow (see InputSpec); channels are then 3
    val_fraction: float = 0.2
    patience: int = 5  # epochs without improvement before stopping
    lr_patience: int = 2  # epochs without improvement before halving the learning rate
    min_delta: float = 1e-5  # smaller validation improvements do not count
    flip: bool = True  # horizontal-flip augmentation
    seed: int = 0
    workers: int | None = None  # DataLoader worker processes; None: from the cores
    quantile: float = 0.95
    window: int = 4  # clips per instability window
    max_minutes: float | None = None  # stop after the epoch that crosses this wall time
    device: str = "auto"
    model: dict[str, Any] = field(default_factory=dict)  # extra architecture config fields
    pseudo_weight: float = 0.0  # weight of the pseudo-anomaly head's loss (tasks/learning/pseudo.py); 0: off
    distill: str | None = None  # checkpoint of an optical-flow teacher whose frame scores the model learns (tasks/learning/distill.py)
    distill_weight: float = 1.0  # weight of the score-distillation loss

    def __post_init__(self) -> None:
        if self.role not in DEFAULT_ARCH:
            raise ParameterError(f"role must be 'small' or 'large', got {self.role!r}")
        self.arch = self.arch or DEFAULT_ARCH[self.role]
        model_class(self.arch)  # unknown names fail here
        for name in ("epochs", "clip_len", "stride", "patience", "lr_patience"):
            if getattr(self, name) < 1:
                raise ParameterError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.train_stride is not None and self.train_stride < 1:
            raise ParameterError(f"train_stride must be >= 1, got {self.train_stride}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ParameterError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ParameterError(f"lr must be a finite number > 0, got {self.lr}")
        if not 0 <= self.seed < 2**32:
            raise ParameterError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.batch < 2:
            raise ParameterError(f"batch must be >= 2 (batch normalisation needs two clips), got {self.batch}")
        if self.channels not in (None, 1, 3):
            raise ParameterError(f"channels must be 1 or 3, got {self.channels}")
        if self.size is not None:
            self.size = (int(self.size[0]), int(self.size[1]))
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ParameterError(f"max_minutes must be > 0, got {self.max_minutes}")
        if not (math.isfinite(self.pseudo_weight) and self.pseudo_weight >= 0):
            raise ParameterError(f"pseudo_weight must be a finite number >= 0, got {self.pseudo_weight}")
        if not (math.isfinite(self.distill_weight) and self.distill_weight > 0):
            raise ParameterError(f"distill_weight must be a finite number > 0, got {self.distill_weight}")
        if self.flow and self.motion:
            raise ParameterError("choose one model input: frame differences (motion) or optical flow, not both")
        if self.flow and self.channels == 1:
            raise ParameterError("optical-flow input has 3 channels (x, y, speed); it cannot be gray")
        if self.distill is not None:
            self.distill = str(self.distill)

    @property
    def effective_train_stride(self) -> int:
        return self.train_stride or max(1, self.stride // 2)


GEOMETRY = frozenset({"in_channels", "clip_len", "height", "width"})  # config fields set from the input spec


def _option_value(text: str) -> Any:
    """'4' -> 4, '0.5' -> 0.5, 'true' -> True, '16,32,64' -> [16, 32, 64]."""
    if "," in text:
        return [_option_value(part) for part in text.split(",") if part]
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_model_options(items: list[str] | None, arch: str) -> dict[str, Any]:
    """`--set KEY=VALUE` items as architecture config fields, checked against `arch`'s config."""
    values: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise ParameterError(f"--set takes KEY=VALUE (e.g. channels=16,32,64,128), got {item!r}")
        values[key.strip()] = _option_value(text.strip())
    shared = sorted(set(values) & GEOMETRY)
    if shared:
        raise ParameterError(f"--set cannot change {shared}: use --gray/--rgb, --clip-len and --size")
    known = [f.name for f in fields(model_class(arch).config_class) if f.name not in GEOMETRY]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ParameterError(f"{arch} has no setting(s) {unknown}; its settings: {', '.join(known)}")
    make_config(arch, values).validate()  # bad values fail here
    return values


@dataclass
class TrainResult:
    checkpoint: Path
    arch: str
    role: str
    parameters: int
    best_val_loss: float
    best_epoch: int
    epochs_run: int
    seconds: float
    stopped: str  # "early-stopping", "epochs", "time-limit"
    train_clips: int
    val_clips: int
    resumed_from: int | None
    device: str

    def summary(self) -> str:
        resumed = f", resumed after epoch {self.resumed_from}" if self.resumed_from else ""
        if self.stopped == "fitted":
            return (
                f"checkpoint: {self.checkpoint}\n"
                f"{self.arch} ({self.role}): fitted on {self.train_clips} normal clips (no gradient training), "
                f"calibrated on {self.val_clips} held-out clips; {self.seconds:.1f} s on {self.device}"
            )
        return (
            f"checkpoint: {self.checkpoint}\n"
            f"{self.arch} ({self.role}): {self.parameters:,} trainable parameters; best validation loss "
            f"{self.best_val_loss:.5f} at epoch {self.best_epoch} of {self.epochs_run} ({self.stopped}{resumed}); "
            f"{self.train_clips} training / {self.val_clips} held-out clips; {self.seconds / 60:.1f} min on {self.device}"
        )


@dataclass(frozen=True)
class Split:
    """Training and held-out clips as (video id, start frame), plus the held-out videos in order."""

    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    train_videos: list[str]
    val_videos: list[str]
    calibration: list[tuple[str, int]]  # held-out clips at the scoring stride, in stream order


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
        calibration = val
    else:
        vid = ids[0]
        n = by_id[vid].n_frames
        cut = int(n * (1 - config.val_fraction))
        train_ids, val_ids = [vid], [vid]
        train = windows(vid, config.effective_train_stride, 0, cut)
        val = windows(vid, config.stride, cut, n)
        calibration = val
    if not train:
        raise PipelineError(f"no training clip of {t} frames fits in the training videos {train_ids}")
    if not val:
        raise PipelineError(
            f"no held-out clip of {t} frames fits in {val_ids}; add training videos or lower --clip-len"
        )
    return Split(train, val, train_ids, val_ids, calibration)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)


class _Progress:
    """tqdm bar over batches with loss and clips/s, or nothing."""

    def __init__(self, enabled: bool, total: int, desc: str) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
        self.start, self.clips = time.perf_counter(), 0

    def update(self, clips: int, loss: float) -> None:
        self.clips += clips
        if self.bar is not None:
            rate = self.clips / max(time.perf_counter() - self.start, 1e-9)
            # a fit has no loss (nan): only its rate is shown
            self.bar.set_postfix(clips_s=f"{rate:.1f}", **({} if math.isnan(loss) else {"loss": f"{loss:.5f}"}))
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class EpochShuffle(torch.utils.data.Sampler):
    """A fresh permutation per epoch from (seed, epoch) alone, so a resumed run sees the same order."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):  # noqa: ANN204
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def _loader(store_url: str, index: list[tuple[str, int]], config: TrainConfig, *, sampler: EpochShuffle | None, workers: int) -> DataLoader:
    # Worker processes are spawned, not forked: a fork would copy Prefect's and Zarr's threads and
    # run the parent's exit handlers in the child. They persist across epochs, so the start-up
    # (importing torch and zarr, a few seconds) is paid once per training run.
    return DataLoader(
        ClipDataset(store_url, index, config.clip_len), batch_size=config.batch, sampler=sampler,
        drop_last=sampler is not None and len(index) > config.batch,  # a lone tiny last batch upsets batch norm
        num_workers=workers, worker_init_fn=_worker_init if workers else None,
        multiprocessing_context="spawn" if workers else None, persistent_workers=workers > 0,
        # the loader's own generator seeds its workers, so it never draws from the global RNG
        # (which a resumed run restores, and the VAE samples from)
        generator=torch.Generator().manual_seed(config.seed),
        pin_memory=torch.cuda.is_available(), prefetch_factor=4 if workers else None,
    )


def evaluate_loss(model: ClipModel, loader: DataLoader, spec: InputSpec, device: torch.device) -> float:
    """Mean of the model's held-out criterion over the loader's clips (reconstruction MSE unless the
    model says otherwise), in eval mode (deterministic)."""
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode(), autocast_for(device):
        for frames in loader:
            x = prepare_clips(frames, spec, model.value_range, device=device)
            out = model(x)
            total += float(model.heldout_error(x, out).sum())
            count += x.shape[0]
    return total / max(count, 1)


@contextmanager
def _frozen_norm_statistics(model: nn.Module) -> Iterator[None]:
    """Batch norm normalises with batch statistics as in training but leaves its running statistics
    (what scoring uses) alone: momentum 0 keeps them as they are."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum


@dataclass
class _PseudoTraining:
    head: PseudoAnomalyHead
    weight: float
    gen: torch.Generator


@dataclass
class _Distillation:
    teacher: ScoreTeacher
    weight: float


def _train_epoch(
    model: ClipModel, loader: DataLoader, spec: InputSpec, optimizer: torch.optim.Optimizer, device: torch.device,
    flip_gen: torch.Generator | None, bar: _Progress, pseudo: _PseudoTraining | None = None,
    distill: _Distillation | None = None,
) -> tuple[float, dict[str, float]]:
    """One pass over the training clips; flips half of them when `flip_gen` is given. Mean loss, and
    epoch means of the extras: the pseudo-anomaly head's accuracy (`pseudo_accuracy`) and the
    correlation of the model's frame scores with the teacher's (`teacher_correlation`)."""
    model.train()
    running, n_batches, accuracy, correlation = 0.0, 0, 0.0, 0.0
    for frames in loader:
        x = prepare_clips(frames, spec, model.value_range, device=device)
        mask = None
        if flip_gen is not None:
            mask = (torch.rand(x.shape[0], generator=flip_gen) < 0.5).to(device)
            x = torch.where(mask.view(-1, 1, 1, 1, 1), x.flip(-1), x)
        target = None
        if distill is not None:  # the teacher sees the same clips, flipped alike (frames are (B, T, H, W, C))
            raw = frames if mask is None else torch.where(mask.cpu().view(-1, 1, 1, 1, 1), frames.flip(3), frames)
            target = distill.teacher.frame_scores(raw, device)
        with autocast_for(device):
            out = model(x)
            loss, _parts = model.loss(x, out)
            if pseudo is not None:
                made, _kinds = pseudo_anomalies(x, pseudo.gen, model.value_range)
                # The pseudo-anomalous clips must not shift the running statistics scoring uses.
                with _frozen_norm_statistics(model):
                    made_out = model(made)
                head_loss, acc = pseudo.head.loss(out.embedding, made_out.embedding)
                loss = loss + pseudo.weight * head_loss
                accuracy += acc
            if distill is not None:
                mismatch, r = standardised_mismatch(student_frame_scores(model, x, out), target)
                loss = loss + distill.weight * mismatch
                correlation += r
        if not torch.isfinite(loss):
            raise PipelineError(f"training {model.arch} diverged (loss {float(loss.detach())}); lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += float(loss.detach())
        n_batches += 1
        bar.update(x.shape[0], running / n_batches)
    extras = {}
    if pseudo is not None:
        extras["pseudo_accuracy"] = accuracy / max(n_batches, 1)
    if distill is not None:
        extras["teacher_correlation"] = correlation / max(n_batches, 1)
    return running / max(n_batches, 1), extras


# Settings that change when or where a run stops or reads, not the weights it reaches epoch by epoch.
_RESUME_IGNORES = frozenset({"epochs", "max_minutes", "workers", "patience"})


def _resume_key(config_record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config_record.items() if k not in _RESUME_IGNORES}


def _state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state")


@dataclass
class TrainingPlan:
    store: ClipStore
    videos: list[Video]
    spec: InputSpec
    model_config: Any
    split: Split
    teacher: ScoreTeacher | None = None  # the distillation teacher, loaded on the CPU

    def describe(self, config: TrainConfig) -> str:
        """One line: what is trained on what."""
        s = self.spec
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
    channels = 3 if config.flow else (config.channels or store_c)
    spec = InputSpec(clip_len=config.clip_len, stride=config.stride, height=height, width=width, channels=channels,
                     motion=config.motion, flow=config.flow)
    model_cfg = make_config(
        config.arch, {**config.model, "in_channels": channels, "clip_len": config.clip_len, "height": height, "width": width}
    )
    model_cfg.validate()
    teacher = None
    if config.distill is not None:
        check_student(model_class(config.arch))
        teacher = ScoreTeacher.load(config.distill, spec, torch.device("cpu"))  # refuses a missing or mismatched teacher
    split = split_clips(videos, config)
    if len(split.train) < 2:
        raise PipelineError(f"only {len(split.train)} training clip fits in {split.train_videos}; batch normalisation needs two")
    longest = max(sum(1 for v, _ in split.calibration if v == vid) for vid in split.val_videos)
    if longest < config.window:
        need = config.clip_len + (config.window - 1) * config.stride
        raise PipelineError(
            f"calibration needs a held-out video of at least {config.window} clips ({need} frames at clip length "
            f"{config.clip_len} and stride {config.stride}); the held-out {split.val_videos} give at most {longest}. "
            "Lower --stride or --clip-len, or add longer training videos"
        )
    return TrainingPlan(store, videos, spec, model_cfg, split, teacher)


def train_model(
    store_url: str, out: str | Path, config: TrainConfig, *, progress: bool = False, resume: bool = True,
    overwrite: bool = False, log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train `config.arch` on the store's normal training videos and write a calibrated checkpoint.

    Each epoch ends by saving the full training state beside `out` (`<out>.state`); a later call with
    the same config resumes from it. The checkpoint holds the weights of the epoch with the lowest
    held-out loss, calibrated on the held-out clips; the state file is removed when it is written.
    """
    say = log or (lambda _msg: None)
    out = Path(out).expanduser()
    plan = plan_training(store_url, out, config, overwrite=overwrite)
    say(plan.describe(config))
    store, videos, spec, model_cfg, split = plan.store, plan.videos, plan.spec, plan.model_config, plan.split
    cls = model_class(config.arch)
    if cls.fitted:
        return fit_model(plan, config, store_url, out, progress=progress, log=say)

    _seed_everything(config.seed)
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
        pseudo = _PseudoTraining(PseudoAnomalyHead(features).to(device), config.pseudo_weight, torch.Generator())
        parameters += list(pseudo.head.parameters())
    distill = None
    if plan.teacher is not None:
        plan.teacher.model.to(device)
        distill = _Distillation(plan.teacher, config.distill_weight)
    optimizer = torch.optim.Adam(parameters, lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=config.lr_patience)
    config_record = asdict(config)
    fingerprint = dataset_fingerprint(store.dataset, videos)

    start_epoch, best, best_epoch, best_state, history, bad, elapsed_before = 1, math.inf, 0, None, [], 0, 0.0
    resumed_from = None
    state_path = _state_path(out)
    if resume and state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if _resume_key(state.get("config") or {}) != _resume_key(config_record) or state.get("fingerprint") != fingerprint:
            say(f"ignoring {state_path}: it was saved for other settings or data")
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
            say(f"resuming from {state_path} after epoch {resumed_from}")

    # Training clips stream through worker processes; held-out clips are few and read in-process.
    sampler = EpochShuffle(len(split.train), config.seed)
    train_loader = _loader(store_url, split.train, config, sampler=sampler, workers=workers)
    val_loader = _loader(store_url, split.val, config, sampler=None, workers=0)
    flip_gen = torch.Generator().manual_seed(config.seed + 17)
    t0 = time.perf_counter()
    stopped = "epochs"
    if resumed_from is not None and bad >= config.patience:
        stopped = "early-stopping"
    for epoch in range(start_epoch, config.epochs + 1):
        if stopped == "early-stopping":
            break
        bar = _Progress(progress, math.ceil(len(split.train) / config.batch), f"{config.arch} epoch {epoch}/{config.epochs}")
        flip_gen.manual_seed(config.seed + 17 + epoch)
        sampler.set_epoch(epoch)
        if pseudo is not None:
            pseudo.gen.manual_seed(config.seed + 29 + epoch)
        train_loss, extras = _train_epoch(
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
        }, state_path)
        if bad >= config.patience:
            stopped = "early-stopping"
            break
        if config.max_minutes is not None and seconds >= config.max_minutes * 60:
            stopped = "time-limit"
            break

    if best_state is None:  # resumed a state whose run had already ended
        raise PipelineError(f"{state_path} holds no trained weights; delete it and train again")
    model.load_state_dict(best_state)
    seconds = elapsed_before + time.perf_counter() - t0
    training = {
        "config": config_record, "train_videos": split.train_videos, "val_videos": split.val_videos,
        "train_clips": len(split.train), "val_clips": len(split.val), "history": history,
        "best_epoch": best_epoch, "best_val_loss": best, "stopped": stopped, "seconds": seconds,
        "teacher": None if distill is None else {"path": distill.teacher.path, "arch": distill.teacher.arch},
        "device": str(device), "threads": cores, "workers": workers, "parameters": trainable_parameters(model),
    }
    _save_calibrated(plan, config, store_url, out, best_state, training, device)
    state_path.unlink(missing_ok=True)
    return TrainResult(
        checkpoint=out, arch=config.arch, role=config.role, parameters=trainable_parameters(model),
        best_val_loss=best, best_epoch=best_epoch, epochs_run=len(history), seconds=seconds, stopped=stopped,
        train_clips=len(split.train), val_clips=len(split.val), resumed_from=resumed_from, device=str(device),
    )


def _save_calibrated(plan: TrainingPlan, config: TrainConfig, store_url: str, out: Path, state: dict[str, torch.Tensor],
                     training: dict[str, Any], device: torch.device) -> Checkpoint:
    """The checkpoint of `state`, calibrated on the held-out clips by the pass that scores (the
    scoring rewrite of the model, at its precision), written to `out`."""
    checkpoint = Checkpoint(
        arch=config.arch, role=config.role, model_config=plan.model_config.to_dict(), state_dict=state, input=plan.spec,
        source={**source_spec(plan.videos[0]), "store": store_url}, dataset=plan.store.dataset,
        fingerprint=dataset_fingerprint(plan.store.dataset, plan.videos), calibration=None, training=training,
        versions=package_versions(),
    )
    cal = score_clips(checkpoint, store_url, plan.split.calibration, compute=Compute(device=str(device)))
    checkpoint.calibration = Calibration.fit(
        scores=cal.raw, embeddings=cal.embedding, video_ids=[v for v, _ in plan.split.calibration],
        quantile=config.quantile, window=config.window,
    )
    checkpoint.cache.clear()  # the scoring model built for calibration; scoring builds its own
    save_checkpoint(checkpoint, out)
    return checkpoint


def fit_model(plan: TrainingPlan, config: TrainConfig, store_url: str, out: Path, *, progress: bool = False,
              log: Callable[[str], None] | None = None) -> TrainResult:
    """A fitted model (`ClipModel.fitted`): no gradient steps; `model.fit` sets its state from the
    training videos (every frame once, in order, as clips side by side), then it is calibrated on the
    held-out clips like a trained one. `epochs`, `lr` and the early-stopping settings do not apply."""
    say = log or (lambda _msg: None)
    _seed_everything(config.seed)
    cores = available_cores()
    torch.set_num_threads(cores)
    device = pick_device(config.device)
    model = model_class(config.arch)(plan.model_config).to(device).eval()
    spec = plan.spec
    # every training frame once, in video order: clips side by side (stride = clip length)
    n_frames = {v.id: v.n_frames for v in plan.videos}
    index = [(vid, s) for vid in plan.split.train_videos for s, _ in clip_windows(n_frames[vid], spec.clip_len, spec.clip_len)]
    loader = _loader(store_url, index, config, sampler=None, workers=0)
    bar = _Progress(progress, len(loader), f"{config.arch} fit")
    t0 = time.perf_counter()

    def clips() -> Iterator[torch.Tensor]:
        for frames in loader:
            yield prepare_clips(frames, spec, model.value_range, device=device)
            bar.update(len(frames), float("nan"))

    record = model.fit(clips())
    bar.close()
    seconds = time.perf_counter() - t0
    say(f"fitted {config.arch} on {len(index)} normal clips in {seconds:.1f} s")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    training = {
        "config": asdict(config), "train_videos": plan.split.train_videos, "val_videos": plan.split.val_videos,
        "train_clips": len(index), "val_clips": len(plan.split.val),
        "history": [{"epoch": 0, "fit": True, "seconds": seconds, **record}], "best_epoch": 0,
        "best_val_loss": float("nan"), "stopped": "fitted", "seconds": seconds, "teacher": None,
        "device": str(device), "threads": cores, "workers": 0, "parameters": trainable_parameters(model),
    }
    _save_calibrated(plan, config, store_url, out, state, training, device)
    seconds = time.perf_counter() - t0
    return TrainResult(
        checkpoint=out, arch=config.arch, role=config.role, parameters=trainable_parameters(model),
        best_val_loss=float("nan"), best_epoch=0, epochs_run=0, seconds=seconds, stopped="fitted",
        train_clips=len(index), val_clips=len(plan.split.val), resumed_from=None, device=str(device),
    )
