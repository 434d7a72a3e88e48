"""Detection quality and routing cost of a small/large pair, chosen on normal data and measured on a
labelled benchmark (UCSD Ped2 by default).

    python benchmarks/detection.py --data ../shared/datasets/ped2 --root WORKSPACE
        [--dataset ped2] [--small motion_patch] [--large objects] [--budgets 0.1,0.2,0.3]

Steps:
1. ingest the dataset (colour, as `vad run` does; `--gray` for luma) at its stored size into
   `<root>/stores/<dataset>.zarr`;
2. make and ingest the validation set `vad train` uses (`choices.validation_store`: held-out normal
   training videos with synthetic anomalies, the other training videos as the fit part);
3. on each of the two (validation, then test): fit or train both models on the store's training
   videos (`train_model`, as `vad train` does), score every clip with both models once, then replay
   the router at each budget through `score_videos` (`ReplayMap`: exactly what a real run writes),
   in both frame modes;
4. choose the frame mode on the validation set (the better routed micro AUC at budget 0.2); the test
   rows of both modes are printed, the chosen one marked;
5. time, side by side in one process, pass 1 over every test clip, the large model alone over every
   clip, and a real routed run at 0.2 (both passes), and report the ratio;
6. add the protocol variants papers use (per-video min-max normalisation, temporal smoothing) as
   labelled extra rows of the chosen configuration.

Test labels measure; nothing here is chosen on them. Results go to
`benchmarks/results/detection_<dataset>.{parquet,md}`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from vad.storage import ClipStore
from vad.tasks.evaluation.metrics import Protocol, evaluate
from vad.tasks.evaluation.report import _md_table
from vad.tasks.evaluation.choices import ingest_folder, validation_store
from vad.tasks.runtime.compute import Compute, available_cores
from vad.tasks.inference.routing import BatchBudget
from vad.tasks.inference.scoring import FRAME_MODES, ReplayMap, VideoMap, score_videos
from vad.tasks.runtime.checkpoint import cached_checkpoint
from vad.tasks.learning.training import TrainConfig, train_model
from vad.tasks.workspace import store_url

RESULTS = Path(__file__).resolve().parent / "results"


def say(msg: str) -> None:
    print(msg, flush=True)


def fit(url: str, root: Path, dataset: str, role: str, arch: str) -> tuple[Path, float]:
    """The checkpoint of `arch` fitted (or trained) on the store's training videos, and its minutes."""
    path = root / "experiments" / dataset / f"{role}-{arch}.pt"
    if not path.exists():
        say(f"fit {arch} ({role}) on {dataset}")
        result = train_model(url, path, TrainConfig(role=role, arch=arch, workers=0, max_minutes=30), log=say)
        say(result.summary())
    return path, float(cached_checkpoint(path).training["seconds"]) / 60


def metrics_row(frames: pd.DataFrame, protocol: Protocol = Protocol(), **label: object) -> dict:
    summary, per_video = evaluate(frames, "score", protocol)
    first = per_video.sort_values("video").iloc[0]
    return {**label, "micro_auc": summary["micro_auc"], "micro_eer": summary["micro_eer"], "micro_ap": summary["micro_ap"],
            "macro_auc": summary["macro_auc"], "first_video": first["video"], "first_video_auc": float(first["auc"])}


def quality(url: str, small_path: Path, large_path: Path, budgets: list[float], split: str) -> tuple[list[dict], dict]:
    """Rows for small alone, large alone and routed at each budget, in both frame modes."""
    small, large = cached_checkpoint(small_path), cached_checkpoint(large_path)
    say(f"{split}: pass 1 ({small.arch}) and the large model ({large.arch}) over every clip")
    every = score_videos(url, small, large, BatchBudget(0.0))  # pass 1 over every clip
    large_all = VideoMap().pass2(url, large, {p.video: p.starts for p in every.passes}, Compute())
    rows, finals = [], {}
    for mode in FRAME_MODES:
        for label, budget in [("small only", 0.0), *[(f"routed @ {b:g}", b) for b in budgets], ("large only", 1.0)]:
            result = score_videos(url, small, large, BatchBudget(budget), frame_mode=mode, mapper=ReplayMap(every.passes, large_all))
            frames = result.frames
            rows.append(metrics_row(frames, split=split, frame_mode=mode, scores=label, budget=budget,
                                    escalation=float(result.routing.escalated.mean())))
            finals[(mode, label)] = frames
    return rows, finals


def cost(url: str, small_path: Path, large_path: Path, budget: float) -> list[dict]:
    """Wall seconds, side by side: pass 1 alone, the large model alone on every clip, a real routed run."""
    small, large = cached_checkpoint(small_path), cached_checkpoint(large_path)
    n_frames = sum(v.n_frames for v in ClipStore.open(url).videos(split="test"))
    t0 = time.perf_counter()
    first = score_videos(url, small, None, BatchBudget(0.0))
    t_small = time.perf_counter() - t0
    t0 = time.perf_counter()
    VideoMap().pass2(url, large, {p.video: p.starts for p in first.passes}, Compute())
    t_large = time.perf_counter() - t0
    t0 = time.perf_counter()
    routed = score_videos(url, small, large, BatchBudget(budget))
    t_routed = time.perf_counter() - t0
    clips = len(routed.clips)
    return [
        {"run": "small only (pass 1)", "large_calls": 0, "seconds": t_small, "frames_per_s": n_frames / t_small, "of_large_only": t_small / t_large},
        {"run": "large only", "large_calls": clips, "seconds": t_large, "frames_per_s": n_frames / t_large, "of_large_only": 1.0},
        {"run": f"routed @ {budget:g}", "large_calls": routed.large.calls, "seconds": t_routed,
         "frames_per_s": n_frames / t_routed, "of_large_only": t_routed / t_large},
        {"run": "per clip: large / small", "large_calls": None, "seconds": None, "frames_per_s": None,
         "of_large_only": (t_large / clips) / (t_small / clips)},
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="the dataset folder (e.g. ../shared/datasets/ped2)")
    ap.add_argument("--root", required=True, type=Path, help="workspace for stores, checkpoints and the validation set")
    ap.add_argument("--dataset", default="ped2")
    ap.add_argument("--small", default="motion_patch")
    ap.add_argument("--large", default="objects")
    ap.add_argument("--budgets", default="0.1,0.2,0.3")
    ap.add_argument("--gray", action="store_true", help="ingest luma only (the default keeps colour, as vad run does)")
    args = ap.parse_args()
    budgets = [float(b) for b in args.budgets.split(",") if b]
    root = args.root.resolve()
    torch.set_num_threads(available_cores())

    url = store_url(str(root), args.dataset)
    t0 = time.perf_counter()
    done = ingest_folder(args.data, url, args.dataset, gray=args.gray, layout="auto")
    say(f"ingest {args.dataset}: {done} videos decoded in {time.perf_counter() - t0:.0f} s")
    t0 = time.perf_counter()
    val_id, val_url = validation_store(str(root), args.dataset)
    val_name = f"{args.dataset}-val-{val_id}"
    say(f"validation set {val_id} ready in {time.perf_counter() - t0:.0f} s")

    rows, minutes = [], {}
    for split, (name, store) in (("validation", (val_name, val_url)), ("test", (args.dataset, url))):
        small_path, small_min = fit(store, root, name, "small", args.small)
        large_path, large_min = fit(store, root, name, "large", args.large)
        minutes[split] = {"small": small_min, "large": large_min}
        got, finals = quality(store, small_path, large_path, budgets, split)
        rows += got
        if split == "test":
            test_finals, test_paths = finals, (small_path, large_path)
    table = pd.DataFrame(rows)
    val = table[(table.split == "validation") & (table.scores == "routed @ 0.2")].set_index("frame_mode")["micro_auc"]
    chosen = str(val.idxmax())
    table["chosen"] = (table.frame_mode == chosen) & (table.split == "test")
    say(f"frame mode chosen on the validation set: {chosen} (routed @ 0.2: {val.round(4).to_dict()})")

    extra = []
    for label in ("small only", "routed @ 0.2", "large only"):
        frames = test_finals[(chosen, label)]
        for protocol in (Protocol(minmax=True), Protocol(smooth_sigma=5.0), Protocol(minmax=True, smooth_sigma=5.0)):
            extra.append(metrics_row(frames, protocol, split="test", frame_mode=chosen, scores=f"{label} [{protocol.label}]",
                                     budget=float("nan"), escalation=float("nan"), chosen=False))
    table = pd.concat([table, pd.DataFrame(extra)], ignore_index=True)

    say("timing: pass 1, the large model alone and a routed run at 0.2, side by side")
    costs = pd.DataFrame(cost(url, *test_paths, 0.2))

    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"detection_{args.dataset}"
    table.to_parquet(stem.with_suffix(".parquet"), index=False)
    costs.to_parquet(RESULTS / f"detection_{args.dataset}_cost.parquet", index=False)
    shown = table.assign(**{c: table[c].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
                            for c in ("escalation", "micro_auc", "micro_eer", "micro_ap", "macro_auc", "first_video_auc")})
    md = [f"pair: {args.small} -> {args.large}; frame mode chosen on validation: {chosen}",
          f"fit/train minutes: {json.dumps(minutes)}", "", _md_table(shown.drop(columns=["budget"])), "",
          _md_table(costs.round(3).fillna(""))]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    say("\n" + shown.drop(columns=["budget"]).to_string(index=False))
    say("\n" + costs.round(3).to_string(index=False))
    say(f"\nfit minutes {minutes}; torch {torch.__version__}, {available_cores()} cores; tables in {stem}.md")


if __name__ == "__main__":
    sys.exit(main())
