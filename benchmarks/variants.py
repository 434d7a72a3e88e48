"""Does the validation set predict the test? Every declared variant of the default small and large
models, fitted and scored on a camera's validation set (made from its normal training videos only)
and on its real labelled test set, and the rank correlation between the two.

    python benchmarks/variants.py --data ../shared/datasets/ped2 --root WORKSPACE [--dataset ped2]
        [--variants '{"motion_patch": {"raw": {}, "minus_q": {"statistic": "minus_q"}}}']

Steps:
1. ingest the dataset as `vad run` does (RGB, stored size) into `<root>/stores/<dataset>.zarr`;
2. build the validation set from its normal training videos (`tasks/evaluation/validation.py`) and
   ingest it at the source's frame rate as `<dataset>-val`;
3. for each variant (`VARIANTS` of the model classes, or `--variants`): `evaluate_variants`
   (tasks/learning/selection.py, what `vad train` runs) on the validation store and on the real store:
   fit on the train split, score the test split, micro AUC of the frames (covering clips' mean
   calibrated score) with a 95% bootstrap interval over videos. Results are cached per variant
   under `<root>/variants/<dataset>/` (its overrides included), so a rerun fits only what changed;
4. print and write `benchmarks/results/variants_<dataset>.md`: the table, the Spearman rank
   correlation of validation and test AUC per model and pooled over both models' variants, and what
   choosing on validation would have cost against the best variant on test (test labels measure here;
   they choose nothing).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from scipy.stats import spearmanr
from vad.models import DEFAULT_ARCH
from vad.tasks.evaluation.report import _md_table
from vad.tasks.evaluation.validation import ingest_validation_set, make_validation_set
from vad.tasks.learning.selection import evaluate_variants, pass_auc, score_validation, variants_of
from vad.tasks.learning.train_config import TrainConfig
from vad.tasks.runtime.compute import available_cores
from vad.tasks.sources.datasets import discover
from vad.tasks.sources.ingest import Preprocess, ingest_video
from vad.tasks.workspace import store_url

RESULTS = Path(__file__).resolve().parent / "results"


def say(msg: str) -> None:
    print(msg, flush=True)


def validation(root: Path, dataset: str, url: str) -> str:
    """The validation store of the dataset, made on first use; prints what it took."""
    name = f"{dataset}-val"
    folder, val_url = root / "validation" / name, store_url(str(root), name)
    if not (folder / "validation.json").exists():
        shutil.rmtree(folder, ignore_errors=True)
        t0, c0 = time.perf_counter(), time.process_time()
        vs = make_validation_set(url, folder)
        say(f"validation set ({vs.mode}): {len(vs.videos)} test videos from {len(vs.held_out)} held-out pieces, fit part "
            f"{len(vs.fit_videos)} videos; made in {time.perf_counter() - t0:.1f} s wall, {time.process_time() - c0:.1f} s CPU")
    ingest_validation_set(folder, val_url, dataset=name)
    return val_url


def by_kind(passes: list, clip_len: int) -> dict[str, float]:
    """Micro AUC of the validation test videos of each synthetic kind (their ids end in the kind)."""
    kinds: dict[str, list] = {}
    for p in passes:
        kinds.setdefault(p.video.rsplit("-", 1)[-1], []).append(p)
    return {k: round(pass_auc(ps, clip_len, resamples=0)[0], 4) for k, ps in sorted(kinds.items())}


def run_variant(url: str, out: Path, arch: str, role: str, name: str, overrides: dict, split: str) -> dict:
    """One variant on one store: cached as JSON (recomputed when its overrides changed)."""
    cache = out / f"{role}-{arch}-{name}.json"
    config = TrainConfig(role=role, arch=arch, workers=0)
    got = json.loads(cache.read_text()) if cache.exists() else {}
    if got.get("overrides") != overrides:
        out.mkdir(parents=True, exist_ok=True)
        (r,) = evaluate_variants(url, arch, role, {name: overrides}, config, out_dir=out, log=say,
                                  split_name="validation" if split == "val" else "test")
        got = {"overrides": overrides, "auc": r.auc, "low": r.low, "high": r.high, "seconds": r.seconds,
               **({"by_kind": by_kind(r.passes, config.clip_len)} if split == "val" else {})}
        cache.write_text(json.dumps(got))
    elif split == "val" and "by_kind" not in got:  # cached before the per-kind figures: score once more
        got["by_kind"] = by_kind(score_validation(url, out / f"{role}-{arch}-{name}.pt"), config.clip_len)
        cache.write_text(json.dumps(got))
    return got


def spearman(frame: pd.DataFrame) -> float:
    if len(frame) < 2 or frame.val_auc.nunique() < 2 or frame.test_auc.nunique() < 2:
        return float("nan")
    return float(spearmanr(frame.val_auc, frame.test_auc).statistic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="the dataset folder (e.g. ../shared/datasets/ped2)")
    ap.add_argument("--root", required=True, type=Path, help="workspace for stores, the validation set and checkpoints")
    ap.add_argument("--dataset", default=None, help="store name (default: the folder's name)")
    ap.add_argument("--variants", default=None, help="JSON {arch: {variant: overrides}} instead of the declared VARIANTS")
    args = ap.parse_args()
    dataset = args.dataset or args.data.name.split("-")[0].lower()
    root = args.root.resolve()
    torch.set_num_threads(available_cores())
    given = json.loads(args.variants) if args.variants else None

    url = store_url(str(root), dataset)
    t0 = time.perf_counter()
    for source in discover(str(args.data), "auto"):
        ingest_video(url, source, Preprocess(), dataset=dataset)
    say(f"ingest {dataset}: {time.perf_counter() - t0:.0f} s")
    val_url = validation(root, dataset, url)

    rows = []
    for role in ("small", "large"):
        arch = DEFAULT_ARCH[role]
        variants = given.get(arch, {}) if given is not None else variants_of(arch)
        for name, overrides in variants.items():
            row = {"model": arch, "variant": name, "overrides": json.dumps(overrides, sort_keys=True)}
            for split, store in (("val", val_url), ("test", url)):
                say(f"{dataset}: {arch}/{name} on the {'validation' if split == 'val' else 'test'} store")
                got = run_variant(store, root / "variants" / dataset / split, arch, role, name, overrides, split)
                row.update({f"{split}_auc": got["auc"], f"{split}_low": got["low"], f"{split}_high": got["high"],
                            f"{split}_s": got["seconds"]})
                row.update({f"val:{k}": v for k, v in got.get("by_kind", {}).items()})
            rows.append(row)
            report(pd.DataFrame(rows), dataset)  # after every variant: a run cut short keeps its table


def report(table: pd.DataFrame, dataset: str) -> None:
    """Print and write the table and the rank correlations of what has been measured."""
    lines = []
    for model, part in [*table.groupby("model", sort=False), ("pooled", table)]:
        chosen = part.loc[part.val_auc.idxmax()]
        lines.append(f"{model}: Spearman {spearman(part):+.2f} over {len(part)} variants; validation picks "
                     f"{chosen.variant} (test {chosen.test_auc:.3f}), best on test {part.test_auc.max():.3f} "
                     f"({part.loc[part.test_auc.idxmax()].variant})")
    shown = table.assign(
        val=[f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in zip(table.val_auc, table.val_low, table.val_high)],
        test=[f"{a:.3f} [{lo:.3f}, {hi:.3f}]" for a, lo, hi in zip(table.test_auc, table.test_low, table.test_high)],
        val_rank=table.groupby("model").val_auc.rank(ascending=False).astype(int),
        test_rank=table.groupby("model").test_auc.rank(ascending=False).astype(int),
        minutes=((table.val_s + table.test_s) / 60).round(1),
    )[["model", "variant", "overrides", "val", "val_rank", "test", "test_rank", "minutes"]]
    kinds = table[["model", "variant", *sorted(c for c in table.columns if c.startswith("val:"))]]
    kinds = kinds.rename(columns=lambda c: c.removeprefix("val:"))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"variants_{dataset}.md"
    md = [f"{dataset}: validation (synthetic anomalies, generator v2) against real test, micro AUC [95% bootstrap over videos]",
          "", _md_table(shown), "", *[f"- {line}" for line in lines], "",
          "validation micro AUC per synthetic kind:", "", _md_table(kinds.round(3))]
    out.write_text("\n".join(md) + "\n")
    table.to_parquet(out.with_suffix(".parquet"), index=False)
    say("\n" + shown.to_string(index=False) + "\n\n" + "\n".join(lines) + "\n\n" + kinds.round(3).to_string(index=False)
        + f"\n\ntables in {out}\n")


if __name__ == "__main__":
    sys.exit(main())
