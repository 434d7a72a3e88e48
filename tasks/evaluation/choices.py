"""The choices `vad train` makes per camera from its own normal footage: the validation store (made
from the store's normal training videos by `validation.make_validation_set`, ingested, reused while
the footage, the generator and the seed are unchanged), the model variant (`tasks/learning/selection.py`)
and, for the large model, the fusion rule for escalated clips (`routing.FUSIONS`), replayed at the
default budget on the validation test clips. Test labels of the real dataset never enter.

Layout: `<root>/validation/<dataset>/<id>/set` (the record and labels; its PNG frames are dropped once
ingested), `.../store.zarr`, `.../checkpoints` (the variants as fitted on the validation store).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from vad.models import model_class
from vad.storage import ClipStore
from vad.tasks.evaluation.validation import GENERATOR_VERSION, RECORD_NAME, make_validation_set
from vad.tasks.inference.routing import FUSIONS, ROUTERS, BatchBudget, RouterConfig, router_from_record
from vad.tasks.inference.scoring import ReplayMap, VideoMap, score_videos
from vad.tasks.learning.selection import (
    RESAMPLES,
    VariantResult,
    best,
    best_paired,
    evaluate_variants,
    paired_bootstrap,
    selection_wanted,
    variants_of,
)
from vad.tasks.learning.train_config import TrainConfig
from vad.tasks.runtime.checkpoint import Checkpoint, dataset_fingerprint, find_checkpoint, load_checkpoint
from vad.tasks.runtime.compute import Compute
from vad.tasks.sources.datasets import discover
from vad.tasks.sources.ingest import Preprocess, ingest_video
from vad.tasks.workspace import check_dataset_name, store_url

from vad.errors import PipelineError

FUSION_BUDGET = 0.2  # the default routed budget: the rule is chosen where it is used
CHOICE_BUDGETS = (0.1, 0.2, 0.3)  # a router and rule must hold over the budgets a user picks from
SEED = 0


def validation_id(store: ClipStore, seed: int = SEED) -> str:
    """The id of a store's validation set: its normal footage, the generator version and the seed."""
    videos = list(store.videos(split="train"))
    key = f"{dataset_fingerprint(store.dataset, videos)}:{GENERATOR_VERSION}:{seed}"
    return hashlib.blake2b(key.encode(), digest_size=6).hexdigest()


def ingest_folder(folder: str | Path, url: str, dataset: str, *, gray: bool, layout: str = "folder") -> int:
    """Ingest a dataset folder at its stored size (`layout` as `discover` takes it); unchanged videos
    are skipped. Returns how many videos were decoded."""
    results = [ingest_video(url, s, Preprocess(gray=gray), dataset=dataset) for s in discover(str(folder), layout)]
    return sum(r.status == "ingested" for r in results)


def validation_store(root: str, dataset: str, *, seed: int = SEED) -> tuple[str, str]:
    """The (id, store URL) of the dataset's validation store, made and ingested on first use. Raises a
    `PipelineError` (a `ParameterError` when the footage is too little) when it cannot be made."""
    store = ClipStore.open(store_url(root, dataset))
    vid = validation_id(store, seed)
    base = Path(root) / "validation" / check_dataset_name(dataset) / vid
    folder, url, done = base / "set", str(base / "store.zarr"), base / "ingested"
    if done.exists() and Path(url).exists():
        return vid, url
    if (folder / RECORD_NAME).exists() and not (folder / "test").exists():
        shutil.rmtree(folder)  # its frames were dropped but the store is gone: make it again
    if not (folder / RECORD_NAME).exists():
        make_validation_set(store_url(root, dataset), folder, seed=seed)
    channels = next(iter(store.videos(split="train"))).frames.shape[3]
    ingest_folder(folder, url, f"{dataset}-val", gray=channels == 1)
    for part in ("train", "test"):  # the frames are in the store now; the record and labels.csv stay
        shutil.rmtree(folder / part, ignore_errors=True)
    done.write_text(vid + "\n")
    return vid, url


def _base_config(config: TrainConfig, root: str, dataset: str) -> TrainConfig:
    """`config` for fits on the validation store: frame folders carry no frame rate, so a model with
    settings in seconds gets the real store's. The small model is calibrated as on the real store (out
    of fold by default): the router's signals and its gray zone are read against that calibration, and
    the router is chosen on validation. The large model gets one fit per variant, calibrated on a
    held-out split (its variant choice ranks frames within one model, and its fits are the costly ones)."""
    video = next(iter(ClipStore.open(store_url(root, dataset)).videos(split="train")))
    fps = video.attrs.get("fps")
    has_fps = "fps" in {f.name for f in fields(model_class(str(config.arch)).config_class)}
    return replace(config, model={**config.model, **({"fps": float(fps)} if fps and has_fps else {})}, workers=0,
                   calibration_folds=config.calibration_folds if config.role == "small" else 1)


def choose_escalation(val_store_url: str, small: Checkpoint, large: Checkpoint, *, large_passes: list | None = None,
                      budget: float = FUSION_BUDGET, budgets: tuple[float, ...] = CHOICE_BUDGETS, seed: int = SEED,
                      resamples: int = RESAMPLES) -> dict[str, Any]:
    """Every router of `ROUTERS` with every rule of `FUSIONS`, replayed over the validation test clips,
    scored once by each model (`large_passes`: the large model's pass over them, when at hand): at
    `budget` (the default run's) micro AUC, its bootstrap interval and the paired gain over the plain
    pair (the default router, "replace"); at each of `budgets` (the range a user picks from) the
    lower end of that gain's interval. A candidate replaces the plain pair only when its gain is surely
    above 0 at every one of `budgets` (the highest AUC at `budget` among those; an exact tie keeps the
    earlier); the models alone beside."""
    ids = ClipStore.open(val_store_url).video_ids(split="test")
    passes = VideoMap().pass1(val_store_url, small, large, ids, Compute())
    if large_passes is not None:
        large_all = {p.video: p.out for p in large_passes}
    else:
        large_all = VideoMap().pass2(val_store_url, large, {p.video: p.starts for p in passes}, Compute())
    replay = ReplayMap(passes, large_all)

    def frames(b: float, rule: str, router: RouterConfig) -> list[pd.DataFrame]:
        table = score_videos(val_store_url, small, large, BatchBudget(b), videos=ids, fusion=rule, router=router,
                             mapper=replay).frames
        return [g for _, g in table.groupby("video", sort=False)]

    names = [(r, f) for r in ROUTERS for f in FUSIONS]
    labels = [g["label"].astype("float64").fillna(-1).to_numpy() for g in frames(0.0, "replace", RouterConfig())]

    def figures(b: float, pairs: list[tuple[str, str]], draws: int) -> list[dict[str, float]]:
        scores = [[g["score"].to_numpy() for g in frames(b, f, router_from_record(ROUTERS[r]))] for r, f in pairs]
        return paired_bootstrap(labels, scores, seed=seed, resamples=draws)

    at = {b: figures(b, names, resamples) for b in dict.fromkeys((budget, *budgets))}
    rows = [{"name": f"{r} / {f}", "router": r, "fusion": f, **at[budget][i],
             "gain_low_by_budget": {f"{b:g}": at[b][i]["gain_low"] for b in budgets}} for i, (r, f) in enumerate(names)]
    pick = best_paired([{**row, "gain_low": worst_gain_low(row)} for row in rows])
    alone = {k: figures(b, [("default", "replace")], 0)[0]["auc"] for k, b in (("small", 0.0), ("large", 1.0))}
    chosen_router = rows[pick]["router"]
    return {"budget": budget, "budgets": list(budgets), "candidates": rows, "chosen": rows[pick]["fusion"],
            "router": chosen_router, "router_settings": router_from_record(ROUTERS[chosen_router]).record(), "alone": alone,
            "reason": "the default router and replace unless another pair's paired gain on validation is surely above 0 "
                      "at every budget of " + ", ".join(f"{b:g}" for b in budgets)}


def worst_gain_low(row: dict[str, Any]) -> float:
    """The lowest end of a candidate's gain interval over the budgets it was replayed at (nan if any is)."""
    lows = list((row.get("gain_low_by_budget") or {}).values()) or [row["gain_low"]]
    return float(np.min(np.asarray(lows, dtype=float)))


def _small_on_validation(root: str, dataset: str, val_id: str, val_url: str, config: TrainConfig) -> Checkpoint | None:
    """The store's small model as fitted on the validation store: the one its own selection kept, else
    fitted now with its recorded settings. None when the dataset has no small checkpoint."""
    try:
        small = load_checkpoint(find_checkpoint(root, dataset, "small"))
    except PipelineError:
        return None
    recorded = {f.name: small.training.get("config", {}).get(f.name) for f in fields(TrainConfig)
                if f.name in small.training.get("config", {})}
    kept = small.selection.get("validation") or {}
    if kept.get("id") == val_id and kept.get("checkpoint") and Path(kept["checkpoint"]).is_file():
        fitted = load_checkpoint(kept["checkpoint"])
        if _folds(fitted) == (recorded.get("calibration_folds") or 1):
            return fitted  # calibrated as the small model's settings calibrate (one from before was held out)
    small_cfg = TrainConfig(**{**recorded, "role": "small", "arch": small.arch, "variant": None})
    fitted = evaluate_variants(val_url, small.arch, "small", {"as-trained": {}}, _base_config(small_cfg, root, dataset),
                               out_dir=Path(val_url).parent / "checkpoints")
    return load_checkpoint(fitted[0].checkpoint)


def _folds(checkpoint: Checkpoint) -> int:
    """How many folds the checkpoint's calibration was scored out of (1: a held-out split)."""
    return int((checkpoint.training.get("calibration") or {}).get("folds", 1))


def choose_for_training(root: str, dataset: str, config: TrainConfig, *,
                        log: Callable[[str], None] | None = None) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The config `vad train` fits on the real store and the selection record for its checkpoint.

    For the role's default architecture with no `--set` options: the variant with the best validation
    micro AUC (or `config.variant` when forced; a single declared variant needs no validation) and, for
    the large model when the dataset has a small checkpoint, the fusion rule. When the validation set
    cannot be made or fitted, the first (or forced) variant and "replace", with the reason recorded.
    Anything else: `config` unchanged and no record (with `--variant`, its overrides under the `--set` ones)."""
    say = log or (lambda _msg: None)
    if not selection_wanted(config):
        if config.variant is None:
            return config, None
        # a forced variant under settings given by hand: the variant's overrides, the settings on top
        overrides = variants_of(str(config.arch))[config.variant]
        return replace(config, model={**overrides, **config.model}), {
            "variants": [], "chosen": config.variant, "reason": "forced by --variant", "validation": None}
    t0 = time.perf_counter()
    variants = variants_of(str(config.arch))
    names = list(variants)
    forced = config.variant
    need_variants = forced is None and len(names) > 1
    need_fusion = config.role == "large" and _has_small(root, dataset)
    chosen = forced or names[0]
    record: dict[str, Any] = {"variants": [], "chosen": chosen,
                              "reason": "forced by --variant" if forced else "the only variant", "validation": None}
    if need_fusion:
        record["fusion"] = {"chosen": "replace", "candidates": [], "reason": "not chosen"}
    if need_variants or need_fusion:
        try:
            val_id, val_url = validation_store(root, dataset)
            record["validation"] = {"id": val_id, "store": val_url}
            base = _base_config(config, root, dataset)
            todo = variants if need_variants else {chosen: variants[chosen]}
            say(f"choosing on validation {val_id} ({dataset}'s own normal footage, synthetic anomalies)")
            results = evaluate_variants(val_url, str(config.arch), config.role, todo, base,
                                        out_dir=Path(val_url).parent / "checkpoints", log=say)
            picked = best(results) if need_variants else results[0]
            chosen = picked.name
            record.update(variants=[r.to_dict() for r in results], chosen=chosen,
                          reason="the default unless a variant is surely better on validation" if need_variants else record["reason"])
            record["validation"]["checkpoint"] = picked.checkpoint
            if need_fusion:
                small = _small_on_validation(root, dataset, val_id, val_url, config)
                if small is not None:
                    record["fusion"] = choose_escalation(val_url, small, load_checkpoint(picked.checkpoint),
                                                         large_passes=picked.passes)
                    say("  router and fusion: " + ", ".join(f"{r['name']} {r['auc']:.3f}" for r in record["fusion"]["candidates"])
                        + f" -> {record['fusion']['router']} / {record['fusion']['chosen']}")
        except PipelineError as exc:
            why = str(exc).splitlines()[0]
            say(f"  no validation-based choice ({why}); keeping {chosen}" + (" and replace" if need_fusion else ""))
            record.update(reason=f"validation failed: {why}")
            if need_fusion:
                record["fusion"] = {"chosen": "replace", "candidates": [], "reason": f"validation failed: {why}"}
    record["seconds"] = time.perf_counter() - t0
    return replace(config, model={**config.model, **variants[chosen]}, variant=chosen), record


def _has_small(root: str, dataset: str) -> bool:
    try:
        find_checkpoint(root, dataset, "small")
    except PipelineError:
        return False
    return True


def format_table(record: dict[str, Any]) -> list[str]:
    """The variant and fusion tables of one selection record, the choices marked with '*'."""
    lines = []
    val = record.get("validation") or {}
    lines.append(f"  validation set: {val.get('id') or 'none'}; {record.get('reason', '')}")
    for r in record.get("variants") or []:
        mark = "*" if r["name"] == record.get("chosen") else " "
        lines.append(f"  {mark} variant {r['name']:<26} AUC {_f(r['auc'])} [{_f(r['low'])}, {_f(r['high'])}]  {r.get('overrides') or {}}")
    if not record.get("variants"):
        lines.append(f"  * variant {record.get('chosen')}")
    fusion = record.get("fusion")
    if fusion:
        rows = escalation_rows(fusion)
        for r in rows:
            mark = "*" if r["chosen"] else " "
            gain = (f"  gain {r['gain']:+.3f} [{r['gain_low']:+.3f}, {r['gain_high']:+.3f}]"
                    if np.isfinite(r.get("gain_low", np.nan)) else "")
            if r.get("gain_low_by_budget"):
                gain += "  gain low at " + ", ".join(f"{b}: {v:+.3f}" for b, v in r["gain_low_by_budget"].items())
            lines.append(f"  {mark} routing {r['name']:<34} AUC at {fusion.get('budget', FUSION_BUDGET):g} {_f(r['auc'])}"
                         f" [{_f(r['low'])}, {_f(r['high'])}]{gain}")
        if fusion.get("alone"):
            lines.append(f"    (alone on the same clips: small {_f(fusion['alone']['small'])}, large {_f(fusion['alone']['large'])})")
        if not rows:
            lines.append(f"  * routing {fusion.get('router', 'default')} / {fusion.get('chosen')} ({fusion.get('reason')})")
    return lines


def escalation_rows(fusion: dict[str, Any]) -> list[dict[str, Any]]:
    """The router-and-fusion candidates of a large checkpoint's record, `chosen` marked; a record
    from before routers were chosen has fusion rules only (the default router)."""
    if "candidates" in fusion:
        chosen = f"{fusion.get('router', 'default')} / {fusion.get('chosen')}"
        return [{**r, "chosen": r["name"] == chosen} for r in fusion["candidates"]]
    return [{**r, "name": f"default / {r['name']}", "chosen": r["name"] == fusion.get("chosen")} for r in fusion.get("rules") or []]


def _f(x: Any) -> str:
    return "  nan" if x is None or not np.isfinite(x) else f"{x:.3f}"


def selection_rows(checkpoint: Checkpoint) -> list[dict[str, Any]]:
    """The checkpoint's choices as table rows: choice (variant, or router / fusion), name, AUC,
    interval, for a router-and-fusion pair `sure_gain` (the lowest bound of its paired gain over the
    default pair at the budgets it was replayed at: above 0 is what a choice needs), chosen."""
    record = checkpoint.selection
    rows = [{"model": f"{checkpoint.role} ({checkpoint.arch})", "choice": "variant", "name": r["name"], "micro_auc": r["auc"],
             "low": r["low"], "high": r["high"], "sure_gain": None, "chosen": r["name"] == record.get("chosen")}
            for r in record.get("variants") or []]
    fusion = record.get("fusion") or {}
    rows += [{"model": f"{checkpoint.role} ({checkpoint.arch})", "choice": f"router / fusion @ {fusion.get('budget', FUSION_BUDGET):g}",
              "name": r["name"], "micro_auc": r["auc"], "low": r["low"], "high": r["high"],
              "sure_gain": worst_gain_low(r) if "gain_low" in r else None,
              "chosen": r["chosen"]} for r in escalation_rows(fusion)]
    return rows


def selection_text(root: str, dataset: str) -> str:
    """What `vad validate` prints: for the dataset's small and large checkpoints, the variant and
    fusion tables with the choices marked. A `NotFoundError` when the dataset has neither."""
    from vad.errors import NotFoundError

    lines = []
    for role in ("small", "large"):
        try:
            ck = load_checkpoint(find_checkpoint(root, dataset, role))
        except NotFoundError:
            lines.append(f"{role}: no checkpoint")
            continue
        record = ck.selection
        lines.append(f"{role}: {ck.path} ({ck.arch}, variant {record.get('chosen', '-')}"
                     + (f", router {(ck.selection.get('fusion') or {}).get('router', 'default')}, fusion {ck.chosen_fusion})"
                        if role == "large" else ")"))
        lines += format_table(record) if record else ["  no validation choice recorded (settings given, or trained before selection)"]
    if all(line.endswith("no checkpoint") for line in lines):
        raise NotFoundError(f"no checkpoint for dataset {dataset!r} in {root}/checkpoints/{dataset}/; train one with `vad train --dataset {dataset}`")
    return "\n".join(lines)
