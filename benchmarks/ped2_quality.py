"""Detection quality on UCSD Ped2: every model option alone, routed pairs at several budgets, the
router's signals, and the report with the Pareto sweep of the headline pair.

    python benchmarks/ped2_quality.py --data ../shared/datasets/ped2 --root WORKSPACE
        [--options NAME,...] [--budgets 0.1,0.2,0.3] [--no-train]

Steps, each skipped when its output is already there:
1. ingest the dataset (gray, stored size 240x360) into `<root>/stores/ped2.zarr`;
2. train each option (seed 0, 30 epochs at most, stopped after its minute limit) into
   `<root>/experiments/ped2/<option>.pt`; an existing checkpoint is used as it is;
3. for each pair, score the test videos once with every clip re-scored by the large model
   (`quality-<small>-<large>-all`); budgets are replayed from that run exactly as `vad score` routes;
4. score the headline pair at budget 0.2 for real (large model on escalated clips only) and write the
   report `<root>/reports/ped2-quality/` with `pareto.parquet` (one row per budget) and its plot.

The protocol is the standard one: frame-level, all test frames pooled (micro), no smoothing, no
per-video normalisation; thresholds and calibration come from held-out normal training videos.
The table is printed and written to `benchmarks/results/ped2_quality.{parquet,md}`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from vad.storage import ClipStore, Video, clip_windows, read_table
from vad.tasks.evaluation.metrics import evaluate
from vad.tasks.evaluation.pareto import Simulation
from vad.tasks.evaluation.report import RunRef, _md_table, build_report
from vad.tasks.inference.routing import SIGNALS, BatchBudget
from vad.tasks.inference.scoring import aggregate_frames, score_dataset
from vad.tasks.runtime.checkpoint import cached_checkpoint
from vad.tasks.runtime.model_input import prepare_clips
from vad.tasks.learning.training import TrainConfig, train_model
from vad.tasks.sources.datasets import discover
from vad.tasks.sources.ingest import Preprocess, ingest_video
from vad.tasks.workspace import store_url

from vad.errors import ParameterError

DATASET = "ped2"
SIZE = (128, 192)  # model input: Ped2's 240x360 frames scaled by ~0.53, aspect kept, multiples of 16


@dataclass(frozen=True)
class Option:
    name: str
    role: str
    arch: str
    input: str  # frames, motion (frame differences) or flow (optical flow)
    max_minutes: float
    what: str
    model: tuple[tuple[str, object], ...] = ()  # architecture config fields besides the defaults
    pseudo: float = 0.0  # weight of the pseudo-anomaly head's loss (tasks/learning/pseudo.py)
    teacher: str | None = None  # the optical-flow option whose frame scores this one learns (tasks/learning/distill.py)
    distill_weight: float = 1.0


OPTIONS = {o.name: o for o in (
    Option("vae3d-frames", "small", "vae3d", "frames", 14, "3D-conv VAE on frames (seed design)"),
    Option("vae3d-motion", "small", "vae3d", "motion", 12, "3D-conv VAE on frame differences"),
    Option("vae3d-motion-plain", "small", "vae3d", "motion", 12, "vae3d on frame differences, not variational",
           (("variational", False),)),
    Option("vae3d-motion-pseudo", "small", "vae3d", "motion", 12,
           "vae3d on frame differences with the pseudo-anomaly head (weight 0.01)", pseudo=0.01),
    Option("vae3d-flow", "small", "vae3d", "flow", 12, "3D-conv VAE on optical flow (Lucas-Kanade; the distillation teacher)"),
    Option("vae3d-frames-distilled", "small", "vae3d", "frames", 14,
           "vae3d on frames, learning vae3d-flow's frame scores (weight 0.1)", teacher="vae3d-flow", distill_weight=0.1),
    Option("predictor-small", "small", "predictor", "frames", 24, "the predictor predicting every 4th frame (half its cost)",
           (("step", 4),)),
    Option("resnet3d_attn-frames", "large", "resnet3d_attn", "frames", 24, "residual 3D VAE + attention on frames (seed design)"),
    Option("resnet3d_attn-motion", "large", "resnet3d_attn", "motion", 22, "residual 3D VAE + attention on frame differences"),
    Option("predictor", "large", "predictor", "frames", 24, "U-Net future-frame predictor (4 frames -> next)"),
    Option("predictor-wide", "large", "predictor", "frames", 25, "the predictor at twice the widths, every 4th frame predicted",
           (("channels", (16, 32, 64, 128)), ("step", 4))),
    Option("resnet18_ae", "large", "resnet18_ae", "frames", 25,
           "single-frame ResNet-18-layout autoencoder at half width, pixel + feature-consistency error, flip TTA",
           (("base_channels", 32),)),
    Option("forecaster", "large", "forecaster", "frames", 25,
           "per-frame CNN encoder + convolutional GRU forecasting the features of frame t+4"),
)}
PAIRS = (
    ("vae3d-frames", "resnet3d_attn-frames"), ("vae3d-motion", "resnet3d_attn-motion"), ("vae3d-motion", "predictor"),
    ("vae3d-motion", "predictor-wide"), ("vae3d-motion-plain", "predictor-wide"), ("predictor-small", "predictor-wide"),
    ("vae3d-motion", "resnet18_ae"), ("vae3d-motion", "forecaster"), ("vae3d-motion-pseudo", "predictor-wide"),
    ("vae3d-flow", "predictor-wide"), ("vae3d-frames-distilled", "predictor-wide"),
)
HEADLINE = ("vae3d-motion", "predictor-wide")
REPORT = "ped2-quality"


def say(msg: str) -> None:
    print(msg, flush=True)


def ingest(data: Path, root: Path) -> str:
    url = store_url(str(root), DATASET)
    sources = discover(str(data), "auto")
    ClipStore.open_or_create(url, dataset=DATASET)
    prep = Preprocess(gray=True)
    t0 = time.perf_counter()
    done = 0
    for source in sources:
        result = ingest_video(url, source, prep, dataset=DATASET)
        done += result.status == "ingested"
    say(f"ingest: {len(sources)} videos in {url} ({done} decoded, {len(sources) - done} already there) in {time.perf_counter() - t0:.0f} s")
    return url


def checkpoint_path(root: Path, name: str) -> Path:
    return root / "experiments" / DATASET / f"{name}.pt"


def train(url: str, root: Path, option: Option, *, allowed: bool) -> Path:
    path = checkpoint_path(root, option.name)
    if path.exists():
        return path
    if not allowed:
        raise ParameterError(f"{path} is missing and --no-train was given")
    teacher = None if option.teacher is None else str(train(url, root, OPTIONS[option.teacher], allowed=allowed))
    say(f"train {option.name}: {option.what}, at most {option.max_minutes:g} min")
    config = TrainConfig(role=option.role, arch=option.arch, epochs=30, size=SIZE, motion=option.input == "motion",
                         flow=option.input == "flow", max_minutes=option.max_minutes, model=dict(option.model),
                         pseudo_weight=option.pseudo, distill=teacher, distill_weight=option.distill_weight)
    result = train_model(url, path, config, progress=sys.stderr.isatty(), log=say)
    say(result.summary())
    return path


def frame_table(video: Video, score: np.ndarray) -> pd.DataFrame:
    """A video's frames with their labels (unknown: null) and one score each, as `evaluate` takes them."""
    labels = video.labels.astype("float64")
    labels[labels < 0] = np.nan
    return pd.DataFrame({"video": video.id, "frame": np.arange(video.n_frames), "label": pd.array(labels, dtype="Int8"), "score": score})


def patch_ablation(url: str, path: Path, patches: tuple[int, ...] = (0, 8, 16, 32), *, flips: bool = False) -> list[dict]:
    """Micro AUC of one model's raw clip scores with each `score_patch` (0: the mean over the whole
    frame), frames taking the mean of their covering clips. Raw scores, so no calibration refit.
    `flips`: test-time augmentation, the error map averaged with that of the mirrored clip."""
    checkpoint = cached_checkpoint(path)
    model = checkpoint.build_model().eval()
    spec = checkpoint.input
    store = ClipStore.open(url)
    per_patch: dict[int, list[pd.DataFrame]] = {p: [] for p in patches}
    for video in store.videos(split="test"):
        frames = video.read(0, video.n_frames)
        starts = np.array([a for a, _ in clip_windows(video.n_frames, spec.clip_len, spec.stride)])
        maps = []
        for i in range(0, len(starts), 16):
            batch = torch.from_numpy(np.stack([frames[a : a + spec.clip_len] for a in starts[i : i + 16]]))
            x = prepare_clips(batch, spec, model.value_range)
            with torch.inference_mode():
                e = model.error_map(x, model(x).recon)
                if flips:
                    xf = x.flip(-1)
                    e = (e + model.error_map(xf, model(xf).recon).flip(-1)) / 2
                maps.append(e)
        errors = torch.cat(maps)
        for p in patches:
            model.config.score_patch = p
            if model.arch == "predictor":
                clip = model.frame_scores(errors[:, model.targets()]).mean(dim=1)
            else:
                clip = model.frame_scores(errors).mean(dim=1)
            per_patch[p].append(frame_table(video, aggregate_frames(video.n_frames, starts, spec.clip_len, clip.numpy())))
    return [{"patch": p, "flips": flips, **metrics_row("", pd.concat(t, ignore_index=True))} for p, t in per_patch.items()]


def frame_difference(url: str, patch: int = 16) -> pd.DataFrame:
    """The no-learning baseline: each frame's worst `patch`-square mean absolute difference to the
    previous frame, at the stored size (windows slide by half a patch, as the models' scores do)."""
    store = ClipStore.open(url)
    tables = []
    for video in store.videos(split="test"):
        x = torch.from_numpy(video.read(0, video.n_frames)[..., 0]).float() / 255
        d = (x[1:] - x[:-1]).abs()
        d = torch.cat([d[:1], d])
        score = F.avg_pool2d(d[:, None], patch, stride=patch // 2).flatten(1).amax(1).numpy()
        tables.append(frame_table(video, score))
    return pd.concat(tables, ignore_index=True)


def metrics_row(label: str, frames: pd.DataFrame, **extra: object) -> dict:
    summary, per_video = evaluate(frames, "score")
    t1 = per_video.loc[per_video.video == "Test001", "auc"]
    return {
        "scores": label, **extra, "micro_auc": summary["micro_auc"], "micro_eer": summary["micro_eer"],
        "micro_ap": summary["micro_ap"], "macro_auc": summary["macro_auc"],
        "test001_auc": float(t1.iloc[0]) if len(t1) else float("nan"),
    }


def training_minutes(path: Path) -> float:
    return float(cached_checkpoint(path).training["seconds"]) / 60


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="the UCSD Ped2 folder (Train/, Test/, labels)")
    ap.add_argument("--root", required=True, type=Path, help="workspace for the store, checkpoints, scores and report")
    ap.add_argument("--options", default=",".join(OPTIONS), help="model options to include (default: all)")
    ap.add_argument("--budgets", default="0.1,0.2,0.3", help="budgets of the routed rows")
    ap.add_argument("--no-train", action="store_true", help="fail instead of training a missing checkpoint")
    args = ap.parse_args()
    names = [n for n in args.options.split(",") if n]
    unknown = sorted(set(names) - set(OPTIONS))
    if unknown:
        ap.error(f"unknown option(s) {unknown}; choose from {', '.join(OPTIONS)}")
    budgets = [float(b) for b in args.budgets.split(",") if b]
    if not args.data.is_dir():
        ap.error(f"--data {args.data} is not a folder")
    root = args.root.resolve()

    url = ingest(args.data, root)
    paths = {n: train(url, root, OPTIONS[n], allowed=not args.no_train) for n in names}

    rows = [metrics_row("frame difference (no learning, 16-px patches)", frame_difference(url), role="-", input="frames", escalation=0.0)]
    router_rows = []
    for small, large in PAIRS:
        if small not in paths or large not in paths:
            continue
        run_id = f"quality-{small}-{large}-all"
        say(f"score {small} + {large}: every clip by both models ({run_id})")
        score_dataset(str(root), DATASET, small_path=str(paths[small]), large_path=str(paths[large]), budget=BatchBudget(1.0), run_id=run_id)
        clips = read_table(str(root), "clips", dataset=DATASET, run_id=run_id)
        frames = read_table(str(root), "frames", dataset=DATASET, run_id=run_id)
        sim = Simulation(clips, frames, clip_len=cached_checkpoint(paths[small]).input.clip_len)
        for name, role, everything in ((small, "small", False), (large, "large", True)):
            if not any(r["scores"] == name for r in rows):
                o = OPTIONS[name]
                rows.append(metrics_row(name, sim.frames_for(sim.escalated(None, everything=everything)), role=role,
                                        input=o.input, escalation=float(everything),
                                        train_minutes=training_minutes(paths[name])))
        if not any(r["scores"] == f"{small} + embedding distance" for r in rows):
            # the embedding-distance ensemble: the mean of the calibrated score and the percentile
            # rank of the clip's embedding distance from the normal centroid (both from normal data)
            ood = cached_checkpoint(paths[small]).calibration.ood.rank(sim.clips["ood_distance"].to_numpy(float))
            rows.append(metrics_row(f"{small} + embedding distance", sim.frames_from((sim.small + ood) / 2),
                                    role="small", input=OPTIONS[small].input, escalation=0.0))
        for b in budgets:
            esc = sim.escalated(BatchBudget(b))
            rows.append(metrics_row(f"routed {small} -> {large} @ {b:g}", sim.frames_for(esc), role="routed", input="-", escalation=float(esc.mean())))
        if (small, large) == HEADLINE:
            base = metrics_row("", sim.frames_for(sim.escalated(None)))["micro_auc"]
            b = 0.2
            for label, only in [("all signals", None)] + [(s, (s,)) for s in SIGNALS if s in sim.signals.flags]:
                esc = sim.escalated(BatchBudget(b), signals=only)
                auc = metrics_row("", sim.frames_for(esc))["micro_auc"]
                fired = sim.signals.flags[only[0]] if only else sim.signals.fired
                router_rows.append({
                    "signals": label, "fired_clips": int(fired.sum()), "escalated": int(esc.sum()),
                    "escalation": float(esc.mean()), "micro_auc": auc,
                    "gain_per_100_escalated": 100 * (auc - base) / max(1, int(esc.sum())),
                })
            routed = "quality-routed-0.2"
            say(f"score {small} + {large} at budget 0.2 ({routed}), then the report")
            summary = score_dataset(str(root), DATASET, small_path=str(paths[small]), large_path=str(paths[large]), budget=BatchBudget(0.2), run_id=routed)
            say(f"routed run: {summary.large_calls} large-model calls for {summary.clips} clips")
            build_report(str(root), [RunRef(DATASET, routed, sweep_run_id=run_id)], name=REPORT)

    table = pd.DataFrame(rows)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    table.to_parquet(out / "ped2_quality.parquet", index=False)
    shown = table.assign(**{c: table[c].map(lambda v: "" if pd.isna(v) else f"{v:.3f}") for c in ("escalation", "micro_auc", "micro_eer", "micro_ap", "macro_auc", "test001_auc")})
    if "train_minutes" in shown:
        shown["train_minutes"] = table["train_minutes"].map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
    say("\n" + shown.to_string(index=False))
    text = _md_table(shown.fillna(""))
    if router_rows:
        router = pd.DataFrame(router_rows)
        router.to_parquet(out / "ped2_router.parquet", index=False)
        say("\nrouter signals, headline pair at budget 0.2:\n" + router.round(4).to_string(index=False))
    (out / "ped2_quality.md").write_text(text + "\n")
    ablation = [{**metrics_row("frame difference", frame_difference(url, p)), "patch": p, "flips": False} for p in (8, 16, 24, 32)]
    for name in ("vae3d-motion", "predictor", "predictor-wide"):
        if name in paths:
            ablation += [{**row, "scores": name} for row in patch_ablation(url, paths[name])]
            ablation += [{**row, "scores": name} for row in patch_ablation(url, paths[name], (16,), flips=True)]
    ablation_table = pd.DataFrame(ablation)[["scores", "patch", "flips", "micro_auc", "macro_auc", "test001_auc"]]
    ablation_table.to_parquet(out / "ped2_patches.parquet", index=False)
    say("\nscore patch (model-input pixels; the frame difference at the stored 240x360; 0 = whole-frame mean):\n"
        + ablation_table.round(3).to_string(index=False))
    report = root / "reports" / REPORT
    if (report / "pareto.parquet").exists():
        pareto = pd.read_parquet(report / "pareto.parquet")
        say(f"\nreport: {report} (pareto.parquet: {len(pareto)} rows)")
    say(json.dumps({"torch": torch.__version__, "cores": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
