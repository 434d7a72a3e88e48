"""What the large model (`objects`) costs per escalated clip, for each DIS optical-flow preset, as
ratios measured side by side in one run.

    python benchmarks/large_cost.py --store STORE_URL --checkpoint LARGE.pt [--videos 3] [--rounds 3]
        [--presets medium,fast,ultrafast,medium@0.5] [--clip-by-clip] [--escalated CLIPS.parquet]

The checkpoint's fitted state is used as it is; only the flow preset of its config (and, written
`PRESET@S`, the scale `flow_scale` = S its flow is found at) is swapped, so
the scores of the swapped rows are not those of a model fitted with that preset (the fit measures
its normal speeds with its own preset): this script measures cost, `benchmarks/variants.py`
measures quality. For each preset, alternated `--rounds` times, `run_pass` scores (a) every clip of
the first `--videos` test videos (runs of overlapping clips, as a pass over a busy stretch scores
them) and (b) every fourth clip of the same videos (isolated clips, none sharing a frame with
another), and (c) with `--escalated`, the clips a routed run escalated (its clip table: a real
budget's mix of runs and isolated clips). CPU seconds (this process, all threads) per clip, the best
round of each; `vs_first` is each preset's best over the first preset's. With `--clip-by-clip`, each
round also scores the same clips with the first preset as the model did before issue 26's work: one
clip at a time (read, converted and `score`d alone, eight a batch), every group's nearest neighbours
by brute force and each object's 90th percentile by `np.percentile`; `vs_clip_by_clip` is each row's
best over that one's.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time

import numpy as np
import pandas as pd
import torch
from vad.models import objects
from vad.storage import ClipStore
from vad.tasks.runtime.checkpoint import load_checkpoint
from vad.tasks.runtime.compute import Compute, available_cores
from vad.tasks.runtime.model_input import clip_index, prepare_clips
from vad.tasks.runtime.passes import run_pass


CLIPWISE = "clip by clip"


def with_preset(checkpoint, preset: str):
    """The checkpoint with its model config's flow preset replaced (and no cached model); `PRESET@S`
    also sets `flow_scale` S (DIS on frames shrunk to that fraction of the stored size)."""
    name, _, scale = preset.partition("@")
    swapped = {"flow_preset": name, **({"flow_scale": float(scale)} if scale else {})}
    return dataclasses.replace(checkpoint, model_config={**checkpoint.model_config, **swapped})


def cpu_seconds(checkpoint, url: str, index: list[tuple[str, int]]) -> float:
    start = time.process_time()
    run_pass(checkpoint, url, index, compute=Compute(), workers=0)
    return time.process_time() - start


@contextlib.contextmanager
def searched_as_before():
    """`objects` with brute-force neighbour search and numpy's percentile, as before the tree search."""
    saved = objects.TREE_MAX_DIM, objects._p90
    objects.TREE_MAX_DIM, objects._p90 = 0, lambda values: np.percentile(values, 90)
    try:
        yield
    finally:
        objects.TREE_MAX_DIM, objects._p90 = saved


def clip_by_clip_seconds(checkpoint, url: str, index: list[tuple[str, int]], batch: int = 8) -> float:
    """CPU seconds to score `index` as before issue 26: each clip read alone, eight a batch through
    `score`, searched as before (`searched_as_before`)."""
    store, spec = ClipStore.open(url), checkpoint.input
    model = checkpoint.build_model()
    start = time.process_time()
    with torch.inference_mode(), searched_as_before():
        for i in range(0, len(index), batch):
            clips = torch.stack([torch.from_numpy(store.video(v).read(s, s + spec.clip_len)) for v, s in index[i : i + batch]])
            model.score(prepare_clips(clips, spec, model.value_range))
    return time.process_time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True, help="clip store URL with test videos")
    ap.add_argument("--checkpoint", required=True, help="a fitted objects checkpoint for that store")
    ap.add_argument("--videos", type=int, default=3, help="test videos to score")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--presets", default="medium,fast,ultrafast", help="DIS presets, each PRESET or PRESET@SCALE")
    ap.add_argument("--clip-by-clip", action="store_true", help="also time the first preset clip by clip")
    ap.add_argument("--escalated", default=None, help="a routed run's clip table (part-0.parquet): also time its escalated clips")
    args = ap.parse_args()
    torch.set_num_threads(available_cores())
    base = load_checkpoint(args.checkpoint)
    if base.arch != "objects":
        raise SystemExit(f"{args.checkpoint}: an objects checkpoint is needed, this one is {base.arch}")
    store = ClipStore.open(args.store)
    spec = base.input
    every = clip_index(store, store.video_ids(split="test")[: args.videos], spec.clip_len, spec.stride)
    sets = {"overlapping": every, "isolated": every[::4]}
    if args.escalated:
        clips = pd.read_parquet(args.escalated, columns=["video", "start_frame", "escalated"])
        clips = clips[clips["escalated"]]
        sets["escalated"] = [(str(v), int(f)) for v, f in zip(clips["video"], clips["start_frame"])]
        if not sets["escalated"]:
            raise SystemExit(f"{args.escalated}: no escalated clip")
    presets = args.presets.split(",")
    models = {p: with_preset(base, p) for p in presets}
    best: dict[tuple[str, str], float] = {}
    for r in range(args.rounds):
        for preset in presets:
            for name, index in sets.items():
                per_clip = cpu_seconds(models[preset], args.store, index) / len(index)
                best[preset, name] = min(best.get((preset, name), float("inf")), per_clip)
                print(f"round {r + 1}: {preset:11s} {name:11s} {per_clip * 1000:7.1f} ms CPU per clip", flush=True)
        if args.clip_by_clip:
            for name, index in sets.items():
                per_clip = clip_by_clip_seconds(models[presets[0]], args.store, index) / len(index)
                best[CLIPWISE, name] = min(best.get((CLIPWISE, name), float("inf")), per_clip)
                print(f"round {r + 1}: {presets[0]} clip by clip {name:11s} {per_clip * 1000:7.1f} ms CPU per clip", flush=True)
    rows = []
    for name, index in sets.items():
        for preset in presets + ([CLIPWISE] if args.clip_by_clip else []):
            row = {"clips": name, "n": len(index), "preset": f"{presets[0]}, clip by clip" if preset == CLIPWISE else preset,
                   "cpu_ms_per_clip": round(best[preset, name] * 1000, 1),
                   "vs_first": round(best[preset, name] / best[presets[0], name], 3)}
            if args.clip_by_clip:
                row["vs_clip_by_clip"] = round(best[preset, name] / best[CLIPWISE, name], 3)
            rows.append(row)
    print("\n" + pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
