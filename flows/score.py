"""Score flow: two-pass scoring of a dataset's test videos with budgeted routing, written as a run."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from tasks.routing import RouterConfig, parse_budget
from tasks.scoring import ScoreSummary, score_dataset
from tasks.workspace import default_root


@task(name="score-dataset", task_run_name="score-{dataset}-{run_id}", cache_policy=NO_CACHE)
def score_task(root: str, dataset: str, small: str | None, large: str | None, budget: float | None, bucket: str | None,
               run_id: str, margin: float, frame_mode: str, progress: bool) -> ScoreSummary:
    return score_dataset(
        root, dataset, small_path=small, large_path=large, budget=parse_budget(budget, bucket), run_id=run_id,
        router=RouterConfig(margin=margin), frame_mode=frame_mode, progress=progress,  # type: ignore[arg-type]
    )


@flow(name="score")
def score_flow(
    dataset: str,
    root: str | None = None,
    small: str | None = None,
    large: str | None = None,
    budget: float | None = None,
    bucket: str | None = None,
    run_id: str | None = None,
    margin: float = 0.05,
    frame_mode: Literal["clip", "frame"] = "clip",
    progress: bool = False,
) -> ScoreSummary:
    """Score `<root>/stores/<dataset>.zarr` (test split) and write `<root>/scores/{clips,frames,runs}/dataset=<dataset>/run=<id>/`.

    Budget: `budget` (a fraction of clips) or `bucket` ("CAPACITY,REFILL"); neither means 0.2.
    """
    run = run_id or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return score_task(root or default_root(), dataset, small, large, budget, bucket, run, margin, frame_mode, progress)
