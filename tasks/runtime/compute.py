"""Compute policy: which device and how many cores a process uses, the precision of a pass, the
batch size (measured on CUDA), and the locks that make passes on one GPU take turns.

Training and scoring both take these from here, so a checkpoint is calibrated by the same pass,
on the same device and precision, that later scores with it.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

import torch
from pydantic import Field
from vad.models import model_class
from vad.tasks.runtime.cores import available_cores, machine_cores  # noqa: F401 - re-exported; `cores` is free of torch
from vad.tasks.runtime.model_input import prepare_clips

from vad.errors import ParameterError, PipelineError

if TYPE_CHECKING:
    from vad.tasks.runtime.checkpoint import Checkpoint

Precision = Literal["auto", "float32", "bfloat16"]
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"
PRECISIONS: tuple[str, ...] = get_args(Precision)


def pick_device(device: str = "auto") -> torch.device:
    """`auto` (CUDA when present, else the CPU), `cpu`, `cuda` or `cuda:N`, checked against this machine."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ParameterError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError(f"device {device!r} was asked for but this machine has no CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ParameterError(f"device {device!r} was asked for but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ParameterError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return dev


def autocast_for(device: torch.device) -> Any:
    # bfloat16 autocast on CUDA needs no loss scaler; on CPU full precision is both safer and faster
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@dataclass(frozen=True)
class Compute:
    """Where and how the scoring passes run; recorded in run.json.

    `batch` None: measured per device (`choose_batch`); `precision` "auto": bfloat16 autocast on
    CUDA, float32 elsewhere (`scoring_precision`); `compile`: `torch.compile` the scoring model
    (a one-off compile of 3-20 s per model, device and batch shape; docs/operations.md says when it pays).
    """

    device: Annotated[str, Field(pattern=DEVICE_PATTERN)] = "auto"
    batch: Annotated[int, Field(ge=1)] | None = None
    precision: Precision = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        if not re.fullmatch(DEVICE_PATTERN, self.device):  # whether this machine has it: `pick_device`
            raise ParameterError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ParameterError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.batch is not None and self.batch < 1:
            raise ParameterError(f"batch must be 1 or more, got {self.batch}")


def scoring_precision(device: torch.device, precision: Precision = "auto") -> Any:
    """The autocast context of a scoring pass: `"auto"` is bfloat16 on CUDA and float32 elsewhere
    (`autocast_for`); `"float32"` and `"bfloat16"` force one. bfloat16 on a CPU without native
    support is slower than float32; it is there to check on any machine what a GPU's scores will be."""
    if precision == "auto":
        return autocast_for(device)
    if precision == "float32":
        return torch.autocast(device.type, enabled=False)
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ParameterError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


# batch sizes tried on CUDA, in order; measurement stops at the first that runs out of memory or
# is not at least 5% faster per clip than the best so far
BATCH_CANDIDATES = (16, 32, 64, 128, 256)
# benchmarks/throughput.py --batches 4,8,16 on 2 cores (README): vae3d-motion 51.6, 55.2, 40.2 clips/s,
# predictor-wide 12.2, 10.4, 8.7 (another run 12.6, 9.0, 7.1); larger batches also hold more memory
CPU_BATCH = 8
_COMPILED_PASS = threading.Lock()
_DEVICE_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_LOCK = threading.Lock()


def measure_batch(
    checkpoint: Checkpoint, device: torch.device, *, precision: Precision = "auto",
    candidates: tuple[int, ...] = BATCH_CANDIDATES, repeats: int = 3,
) -> tuple[int, dict[int, float]]:
    """The batch size that scores the most clips per second on `device`, and clips/s of each tried.

    Each candidate scores random clips of the checkpoint's stored frame size (copy to the device,
    conversion, model) once to warm up and then `repeats` times, timed to the device's completion.
    """
    model = checkpoint.scoring_model(device)
    spec = checkpoint.input
    h, w, c = (int(v) for v in checkpoint.source["frame_size"])
    gen = torch.Generator().manual_seed(0)
    rates: dict[int, float] = {}
    best = 0.0
    for b in candidates:
        clips = torch.randint(0, 256, (b, spec.clip_len, h, w, c), dtype=torch.uint8, generator=gen)
        if device.type == "cuda":
            clips = clips.pin_memory()
        try:
            with torch.inference_mode(), scoring_precision(device, precision):
                model.score(prepare_clips(clips, spec, model.value_range, device=device))
                _synchronize(device)
                t0 = time.perf_counter()
                for _ in range(repeats):
                    model.score(prepare_clips(clips, spec, model.value_range, device=device))
                _synchronize(device)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            break
        rates[b] = b * repeats / (time.perf_counter() - t0)
        if rates[b] < best * 1.05:
            break
        best = max(best, rates[b])
    if not rates:
        raise PipelineError(
            f"{checkpoint.path or checkpoint.arch}: not even {candidates[0]} clips fit in {device}'s memory; give a smaller --batch"
        )
    return max(rates, key=rates.__getitem__), rates


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_cpu_bound(arch: str) -> bool:
    """Whether the architecture does its work on the CPU whatever the device (`ClipModel.cpu_bound`:
    OpenCV's flow and regions in `objects`): its passes neither take a GPU's turn nor measure a batch."""
    return bool(getattr(model_class(arch), "cpu_bound", False))


def choose_batch(checkpoint: Checkpoint, device: torch.device, *, precision: Precision = "auto") -> int:
    """Clips per batch when none is given: `CPU_BATCH` on a CPU and for a CPU-bound model (timing it
    on noise would measure one frame-sized foreground object); on CUDA the fastest of
    `BATCH_CANDIDATES` (`measure_batch`), measured once per checkpoint, device and precision."""
    if device.type != "cuda" or is_cpu_bound(checkpoint.arch):
        return CPU_BATCH
    # measured on the model uncompiled: compiling once per candidate size would take minutes;
    # under the device's lock, so that no pass runs on the GPU meanwhile
    key = ("batch", str(device), precision)
    with _device_lock(device):
        if key not in checkpoint.cache:
            checkpoint.cache[key] = measure_batch(checkpoint, device, precision=precision)[0]
    return checkpoint.cache[key]


def _device_lock(device: torch.device) -> threading.RLock:
    """One lock per CUDA device: passes on one GPU take turns (see `run_pass`)."""
    with _LOCKS_LOCK:
        return _DEVICE_LOCKS.setdefault(str(device), threading.RLock())


def pass_lock(device: torch.device, compile: bool, *, cpu_bound: bool = False) -> Any:
    """What a pass holds while it scores: compiled passes take turns (torch.compile is not safe
    from two threads at once), and so do passes on one GPU (each sized its batch for the GPU alone);
    CPU passes on threads, and passes of a CPU-bound model (`is_cpu_bound`), share the cores freely."""
    if compile:
        return _COMPILED_PASS
    return _device_lock(device) if device.type == "cuda" and not cpu_bound else contextlib.nullcontext()


