"""Train flow: one task that trains a model on a dataset's normal clips and writes its checkpoint."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from vad.tasks.learning.training import TrainConfig, TrainResult, train_model
from vad.tasks.sources.ingest import parse_size
from vad.tasks.workspace import checkpoint_path, default_root, store_url


@task(name="train-model", task_run_name="train-{config.role}-{config.arch}", cache_policy=NO_CACHE)
def train_task(store: str, out: str, config: TrainConfig, progress: bool, resume: bool, overwrite: bool) -> TrainResult:
    from tqdm import tqdm

    return train_model(store, out, config, progress=progress, resume=resume, overwrite=overwrite, log=tqdm.write if progress else None)


@flow(name="train")
def train_flow(
    dataset: str,
    root: str | None = None,
    role: Literal["small", "large"] = "small",
    arch: str | None = None,
    epochs: int = 20,
    batch: int = 8,
    lr: float = 1e-3,
    size: str | None = None,
    gray: bool | None = None,
    clip_len: int = 16,
    stride: int = 8,
    motion: bool = False,
    flow: bool = False,
    flip: bool = True,
    seed: int = 0,
    max_minutes: float | None = None,
    out: str | None = None,
    force: bool = False,
    resume: bool = True,
    progress: bool = False,
    model_options: dict[str, Any] | None = None,
    pseudo_weight: float = 0.0,
    distill: str | None = None,
    distill_weight: float = 1.0,
) -> TrainResult:
    """Train `arch` (default: the role's) on `<root>/stores/<dataset>.zarr` and write a calibrated checkpoint
    (default `<root>/checkpoints/<dataset>/<role>-<arch>.pt`). `model_options` sets architecture config
    fields (e.g. {"channels": [16, 32, 64, 128], "step": 4} for `predictor`); `pseudo_weight` > 0 adds the
    pseudo-anomaly head's loss (`tasks/learning/pseudo.py`); `flow` trains on optical flow, and `distill` (an
    optical-flow checkpoint) adds score distillation from it (`tasks/learning/distill.py`)."""
    root = root or default_root()
    config = TrainConfig(
        role=role, arch=arch, epochs=epochs, batch=batch, lr=lr, size=parse_size(size) if size else None,
        channels=None if gray is None else (1 if gray else 3), clip_len=clip_len, stride=stride, motion=motion, flow=flow,
        flip=flip, seed=seed, max_minutes=max_minutes, model=dict(model_options or {}), pseudo_weight=pseudo_weight,
        distill=distill, distill_weight=distill_weight,
    )
    target = out or checkpoint_path(root, dataset, role, config.arch)
    return train_task(store_url(root, dataset), target, config, progress, resume, force)
