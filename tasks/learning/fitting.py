"""The end of every training run: the calibration of the final state on the held-out clips and the
checkpoint; and the whole run of a fitted model (`ClipModel.fitted`: no gradient steps)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def save_calibrated(plan: TrainingPlan, config: TrainConfig, store_url: str, out: Path, state: dict[str, torch.Tensor],
                     training: dict[str, Any], device: torch.device) -> Checkpoint:
    """The checkpoint of `state`, calibrated on the held-out clips by the pass that scores (the
    scoring rewrite of the model, at its precision), written to `out`."""
    checkpoint = Checkpoint(
        arch=config.arch, role=config.role, model_config=plan.model_config.to_dict(), state_dict=state, input=plan.spec,
        source={**source_spec(plan.videos[0]), "store": store_url}, dataset=plan.store.dataset,
        fingerprint=dataset_fingerprint(plan.store.dataset, plan.videos), calibration=None, training=training,
        versions=package_versions(),
    )
    cal = score_clips(checkpoint, store_url, plan.split.val, compute=Compute(device=str(device)))
    checkpoint.calibration = Calibration.fit(
        scores=cal.raw, embeddings=cal.embedding, video_ids=[v for v, _ in plan.split.val],
        quantile=config.quantile, window=config.window, frame_scores=cal.frame_errors,
    )
    checkpoint.cache.clear()  # the scoring model built for calibration; scoring builds its own
    save_checkpoint(checkpoint, out)
    return checkpoint


def fit_model(plan: TrainingPlan, config: TrainConfig, store_url: str, out: Path, *, progress: bool = False,
              log: Callable[[str], None] | None = None, selection: dict[str, Any] | None = None) -> TrainResult:
    """A fitted model (`ClipModel.fitted`): no gradient steps; `model.fit` sets its state from the
    training part of the split (every frame once, in order, as clips side by side; never a held-out
    frame), then it is calibrated on the held-out clips like a trained one. `epochs`, `lr` and the
    early-stopping settings do not apply."""
    say = log or (lambda _msg: None)
    seed_everything(config.seed)
    cores = available_cores()
    torch.set_num_threads(cores)
    device = pick_device(config.device)
    model = model_class(config.arch)(plan.model_config).to(device).eval()
    spec = plan.spec
    index = plan.split.fit_index(spec.clip_len)  # the training part only: the held-out clips calibrate
    loader = make_loader(store_url, index, config, sampler=None, workers=0)
    bar = Progress(progress, len(loader), f"{config.arch} fit")
    t0 = time.perf_counter()

    def clips() -> Iterator[torch.Tensor]:
        for frames in loader:
            yield prepare_clips(frames, spec, model.value_range, device=device)
            bar.update(len(frames), float("nan"))

    with torch_threads(FIT_THREADS):  # the same fitted state whatever the machine's core count
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
        **({"selection": selection} if selection is not None else {}),
    }
    save_calibrated(plan, config, store_url, out, state, training, device)
    seconds = time.perf_counter() - t0
    return TrainResult(
        checkpoint=out, arch=config.arch, role=config.role, parameters=trainable_parameters(model),
        best_val_loss=float("nan"), best_epoch=0, epochs_run=0, seconds=seconds, stopped="fitted",
        train_clips=len(index), val_clips=len(plan.split.val), resumed_from=None, device=str(device),
    )
