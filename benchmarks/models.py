"""Size and cost of every registered model: trainable parameters, FLOPs per clip, and CPU speed.

    python benchmarks/models.py [--size 128x128] [--channels 1] [--batch 8] [--no-timing]

FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` for one clip in eval mode (a
multiply-add counts as 2 FLOPs; convolutions, transposed convolutions and matrix products only, so
normalisation and activations are left out). Speeds are clips/s of a forward pass (inference) and
of a forward + backward pass (training) on random clips, the best of 3 timed batches after a warm-up,
with `torch.set_num_threads` at the cores available. Results go to benchmarks/results/models.parquet.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode
from vad.models import REGISTRY, build, trainable_parameters
from vad.tasks.runtime.compute import available_cores
from vad.tasks.sources.ingest import parse_size


def _best_of(fn, repeats: int = 3) -> float:
    fn()  # warm-up (allocator, oneDNN kernel choice)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(arch: str, height: int, width: int, channels: int, clip_len: int, batch: int, timing: bool) -> dict:
    torch.manual_seed(0)
    model = build(arch, in_channels=channels, clip_len=clip_len, height=height, width=width).eval()
    lo, hi = model.value_range
    x = lo + (hi - lo) * torch.rand(batch, channels, clip_len, height, width)
    # Counted with autograd on: under inference mode the attention layers take a fused fast path
    # whose matrix products the counter does not see.
    with FlopCounterMode(display=False) as counter:
        model(x[:1])
    row = {
        "arch": arch, "role": model.role, "input": f"{channels}x{clip_len}x{height}x{width}",
        "parameters": trainable_parameters(model), "gflops_per_clip": counter.get_total_flops() / 1e9,
    }
    if timing:
        def infer() -> None:
            with torch.inference_mode():
                model(x)

        def train_step() -> None:
            model.train()
            loss, _ = model.loss(x, model(x))
            loss.backward()
            model.zero_grad(set_to_none=True)
            model.eval()

        row["infer_clips_s"] = batch / _best_of(infer)
        row["train_clips_s"] = batch / _best_of(train_step)
        row["infer_frames_s_stride8"] = row["infer_clips_s"] * 8  # each new clip advances 8 frames
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="128x128")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--clip-len", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--no-timing", action="store_true")
    args = parser.parse_args()
    height, width = parse_size(args.size)
    torch.set_num_threads(available_cores())
    rows = [measure(a, height, width, args.channels, args.clip_len, args.batch, not args.no_timing) for a in REGISTRY]
    table = pd.DataFrame(rows)
    table["machine"] = f"{platform.processor() or platform.machine()}, {available_cores()} cores, torch {torch.__version__}"
    out = Path(__file__).parent / "results" / "vad.models.parquet"
    out.parent.mkdir(exist_ok=True)
    table.to_parquet(out, index=False)
    pd.set_option("display.width", 200)
    print(table.drop(columns="machine").to_string(index=False, float_format=lambda v: f"{v:,.2f}"))
    print(f"\nmachine: {table['machine'].iloc[0]}; saved {out}")


if __name__ == "__main__":
    main()
