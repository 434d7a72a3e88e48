"""What the large model (`objects`) costs per escalated clip, for each DIS optical-flow preset, as
ratios measured side by side in one run.

    python benchmarks/large_cost.py --store STORE_URL --checkpoint LARGE.pt [--videos 3] [--rounds 3]
        [--presets medium,fast,ultrafast]

The checkpoint's fitted state is used as it is; only the flow preset of its config is swapped, so
the scores of the swapped rows are not those of a model fitted with that preset (the fit measures
its normal speeds with its own preset): this script measures cost, `benchmarks/variants.py`
measures quality. For each preset, alternated `--rounds` times, `run_pass` scores (a) every clip of
the first `--videos` test videos (runs of overlapping clips, as a pass over a busy stretch scores
them) and (b) every fourth clip of the same videos (isolated clips, none sharing a frame with
another: what a small budget escalates). CPU seconds (this process, all threads) per clip, the best
round of each; `vs_first` is each preset's best over the first preset's.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import pandas as pd
import torch
from vad.storage import ClipStore
from vad.tasks.runtime.checkpoint import load_checkpoint
from vad.tasks.runtime.compute import Compute, available_cores
from vad.tasks.runtime.model_input import clip_index
from vad.tasks.runtime.passes import run_pass


def with_preset(checkpoint, preset: str):
    """The checkpoint with its model config's flow preset replaced (and no cached model)."""
    return dataclasses.replace(checkpoint, model_config={**checkpoint.model_config, "flow_preset": preset})


def cpu_seconds(checkpoint, url: str, index: list[tuple[str, int]]) -> float:
    start = time.process_time()
    run_pass(checkpoint, url, index, compute=Compute(), workers=0)
    return time.process_time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True, help="clip store URL with test videos")
    ap.add_argument("--checkpoint", required=True, help="a fitted objects checkpoint for that store")
    ap.add_argument("--videos", type=int, default=3, help="test videos to score")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--presets", default="medium,fast,ultrafast")
    args = ap.parse_args()
    torch.set_num_threads(available_cores())
    base = load_checkpoint(args.checkpoint)
    if base.arch != "objects":
        raise SystemExit(f"{args.checkpoint}: an objects checkpoint is needed, this one is {base.arch}")
    store = ClipStore.open(args.store)
    spec = base.input
    every = clip_index(store, store.video_ids(split="test")[: args.videos], spec.clip_len, spec.stride)
    isolated = every[::4]
    presets = args.presets.split(",")
    models = {p: with_preset(base, p) for p in presets}
    best: dict[tuple[str, str], float] = {}
    for r in range(args.rounds):
        for preset in presets:
            for name, index in (("overlapping", every), ("isolated", isolated)):
                per_clip = cpu_seconds(models[preset], args.store, index) / len(index)
                best[preset, name] = min(best.get((preset, name), float("inf")), per_clip)
                print(f"round {r + 1}: {preset:9s} {name:11s} {per_clip * 1000:7.1f} ms CPU per clip", flush=True)
    rows = []
    for name, index in (("overlapping", every), ("isolated", isolated)):
        for preset in presets:
            rows.append({"clips": name, "n": len(index), "preset": preset, "cpu_ms_per_clip": round(best[preset, name] * 1000, 1),
                         "vs_first": round(best[preset, name] / best[presets[0], name], 3)})
    print("\n" + pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
