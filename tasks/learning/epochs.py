"""The gradient-training loop's parts: seeding, clip loaders, the progress bar, one epoch (with the
pseudo-anomaly and distillation terms), the held-out loss, and the resumable state's key and path."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from vad.models import ClipModel
from vad.tasks.runtime.compute import autocast_for
from vad.tasks.learning.distill import ScoreTeacher, standardised_mismatch, student_frame_scores
from vad.tasks.runtime.model_input import ClipDataset, InputSpec, prepare_clips
from vad.tasks.learning.pseudo import PseudoAnomalyHead, pseudo_anomalies

from vad.errors import PipelineError

if TYPE_CHECKING:
    from vad.tasks.learning.train_config import TrainConfig


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)


class Progress:
    """tqdm bar over batches with loss and clips/s, or nothing."""

    def __init__(self, enabled: bool, total: int, desc: str) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True, disable=None)  # none off a terminal
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


def make_loader(store_url: str, index: list[tuple[str, int]], config: TrainConfig, *, sampler: EpochShuffle | None, workers: int) -> DataLoader:
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
class PseudoTraining:
    head: PseudoAnomalyHead
    weight: float
    gen: torch.Generator


@dataclass
class Distillation:
    teacher: ScoreTeacher
    weight: float


def train_epoch(
    model: ClipModel, loader: DataLoader, spec: InputSpec, optimizer: torch.optim.Optimizer, device: torch.device,
    flip_gen: torch.Generator | None, bar: Progress, pseudo: PseudoTraining | None = None,
    distill: Distillation | None = None,
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
RESUME_IGNORES = frozenset({"epochs", "max_minutes", "workers", "patience"})


def resume_key(config_record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config_record.items() if k not in RESUME_IGNORES}


def state_path(out: Path) -> Path:
    return out.with_name(out.name + ".state")
