"""Train flow: the choices made on the camera's own normal footage (variant, fusion rule), then one
task that trains the chosen model on a dataset's normal clips and writes its checkpoint."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from typing import Any

from vad.tasks.evaluation.choices import choose_for_training
from vad.tasks.learning.training import TrainConfig, TrainResult, check_target, train_model
from vad.tasks.workspace import checkpoint_path, default_root, store_url


@task(name="choose-on-validation", task_run_name="choose-{config.role}-{config.arch}", cache_policy=NO_CACHE)
def choose_task(root: str, dataset: str, config: TrainConfig, progress: bool) -> tuple[TrainConfig, dict[str, Any] | None]:
    return choose_for_training(root, dataset, config, log=print if progress else None)


@task(name="train-model", task_run_name="train-{config.role}-{config.arch}", cache_policy=NO_CACHE)
def train_task(store: str, out: str, config: TrainConfig, progress: bool, resume: bool, overwrite: bool,
               selection: dict[str, Any] | None = None) -> TrainResult:
    from tqdm import tqdm

    return train_model(store, out, config, progress=progress, resume=resume, overwrite=overwrite,
                       log=tqdm.write if progress else None, selection=selection)


@flow(name="train")
def train_flow(
    dataset: str,
    root: str | None = None,
    config: TrainConfig | None = None,
    out: str | None = None,
    force: bool = False,
    resume: bool = True,
    progress: bool = False,
) -> TrainResult:
    """Train `config.arch` (default: the role's) on `<root>/stores/<dataset>.zarr` and write a
    calibrated checkpoint (default `<root>/checkpoints/<dataset>/<role>-<arch>.pt`).

    `config` (`TrainConfig`, checked when built; None: the defaults) holds every training choice and is recorded in the
    checkpoint; a deployment gives its fields nested (prefect.yaml), e.g. `config.model` for the
    architecture's own settings ({"channels": [16, 32, 64, 128], "step": 4} for `predictor`).
    `force` replaces an existing checkpoint; `resume` continues from a saved training state. For the
    role's default architecture with no `config.model` settings, the variant (`config.variant` forces
    one) and, for the large model, the fusion rule are first chosen on a validation set made from the
    store's normal videos (`tasks/evaluation/choices.py`) and recorded in the checkpoint."""
    root = root or default_root()
    # None rather than `TrainConfig()`: a default built here would show in the deployment's schema
    # with the small model's architecture filled in, which a run giving only `role` would then keep
    config = config or TrainConfig()
    target = out or checkpoint_path(root, dataset, config.role, str(config.arch))
    check_target(target, overwrite=force)  # before the choices, which cost fits
    chosen, selection = choose_task(root, dataset, config, progress)
    return train_task(store_url(root, dataset), target, chosen, progress, resume, force, selection)
