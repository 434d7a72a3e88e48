"""What `vad train` is asked: the training config (checked when built), `--set KEY=VALUE`
architecture options parsed against the architecture's config, and the result of a run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vad.models import DEFAULT_ARCH, make_config, model_class

from vad.errors import ParameterError


@dataclass
class TrainConfig:
    """Every training choice, recorded in the checkpoint. `size`/`channels` of None take the
    architecture's default size and the store's channel count (1 for a gray-only architecture,
    which then reads the luma of colour frames)."""

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
    calibration_folds: int = 2  # fitted models: calibrated out of fold over all training videos (tasks/learning/split.py); 1: on a held-out split
    fold_max_s: float = 1800.0  # longer training footage keeps the held-out split (`split.out_of_fold`)
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
    variant: str | None = None  # one of the architecture's VARIANTS, forced; None: chosen on validation (tasks/learning/selection.py)

    def __post_init__(self) -> None:
        if self.role not in DEFAULT_ARCH:
            raise ParameterError(f"role must be 'small' or 'large', got {self.role!r}")
        self.arch = self.arch or DEFAULT_ARCH[self.role]
        cls = model_class(self.arch)  # unknown names fail here
        variants = getattr(cls, "VARIANTS", None) or {"default": {}}
        if self.variant is not None and self.variant not in variants:
            raise ParameterError(f"{self.arch} has no variant {self.variant!r}; its variants: {', '.join(variants)}")
        for name in ("epochs", "clip_len", "stride", "patience", "lr_patience"):
            if getattr(self, name) < 1:
                raise ParameterError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.train_stride is not None and self.train_stride < 1:
            raise ParameterError(f"train_stride must be >= 1, got {self.train_stride}")
        if self.calibration_folds < 1:
            raise ParameterError(f"calibration_folds must be >= 1, got {self.calibration_folds}")
        if not (math.isfinite(self.fold_max_s) and self.fold_max_s > 0):
            raise ParameterError(f"fold_max_s must be a number of seconds > 0, got {self.fold_max_s}")
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
                f"calibrated on {self.val_clips} clips scored by a fit without them; {self.seconds:.1f} s on {self.device}"
            )
        return (
            f"checkpoint: {self.checkpoint}\n"
            f"{self.arch} ({self.role}): {self.parameters:,} trainable parameters; best validation loss "
            f"{self.best_val_loss:.5f} at epoch {self.best_epoch} of {self.epochs_run} ({self.stopped}{resumed}); "
            f"{self.train_clips} training / {self.val_clips} held-out clips; {self.seconds / 60:.1f} min on {self.device}"
        )
