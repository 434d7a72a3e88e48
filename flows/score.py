"""Score flow: two-pass scoring of a dataset's test videos with budgeted routing, written as a run.

Pass 1 is one task per video; the router then ranks the clips of all videos together; pass 2 is
one task per video with escalated clips. The tasks run on the chosen task runner (threads, a local
Dask cluster, or a Dask scheduler by address).
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm
from vad.tasks.evaluation.artifacts import publish_score_run
from vad.tasks.runtime.compute import Compute
from vad.tasks.runtime.passes import PassOutput, VideoPass, first_pass, second_pass
from vad.tasks.inference.scoring import (
    ScoreResult,
    ScoreSettings,
    ScoreSummary,
    VideoMap,
    score_inputs,
    score_videos,
    video_list,
)
from vad.tasks.runtime.checkpoint import Checkpoint, cached_checkpoint
from vad.tasks.operations.runners import RunnerSpec, completed, task_runner
from vad.tasks.records import write_run
from vad.tasks.workspace import default_root


@task(name="first-pass", task_run_name="pass1-{video}", cache_policy=NO_CACHE)
def first_pass_task(store: str, small: str, large: str | None, video: str, compute: Compute) -> VideoPass:
    return first_pass(store, cached_checkpoint(small), video, large=cached_checkpoint(large) if large else None, compute=compute)


@task(name="second-pass", task_run_name="pass2-{video}", cache_policy=NO_CACHE)
def second_pass_task(store: str, large: str, video: str, starts: np.ndarray, compute: Compute) -> PassOutput:
    return second_pass(store, cached_checkpoint(large), video, starts, compute=compute)


class TaskMap(VideoMap):
    """The passes as one Prefect task per video, on the flow's task runner; checkpoints travel as
    paths (a Dask worker loads its own copy once)."""

    def pass1(self, store_url: str, small: Checkpoint, large: Checkpoint | None, videos: list[str],
              compute: Compute) -> list[VideoPass]:
        futures = {first_pass_task.submit(store_url, small.path, large.path if large else None, v, compute): v for v in videos}
        done = self._gather(futures, "pass 1")
        return [done[v] for v in videos]

    def pass2(self, store_url: str, large: Checkpoint, todo: dict[str, np.ndarray], compute: Compute) -> dict[str, PassOutput]:
        return self._gather({second_pass_task.submit(store_url, large.path, v, st, compute): v for v, st in todo.items()}, "pass 2")

    def _gather(self, futures: dict, desc: str) -> dict:
        """Wait for a {future: video} map; {video: result}, failing on the first failed task."""
        out = {}
        with tqdm(total=len(futures), desc=desc, unit="video", disable=not self.progress, leave=False) as bar:
            for future in completed(list(futures)):
                out[futures[future]] = future.result()
                bar.update()
        return out


@task(name="write-run", cache_policy=NO_CACHE)
def write_run_task(root: str, dataset: str, run_id: str, result: ScoreResult, small: str, large: str,
                   settings: ScoreSettings, started: datetime) -> ScoreSummary:
    """The run's tables (clips, frames, events) and run.json, then its summary as Prefect artifacts."""
    result.seconds["total"] = (datetime.now(timezone.utc) - started).total_seconds()
    summary = write_run(root, dataset, run_id, result, cached_checkpoint(small), cached_checkpoint(large), settings.budget,
                        frame_mode=settings.frame_mode, compute=settings.compute, events=settings.events)
    publish_score_run(summary.dataset, summary.run_id, summary.text(), summary.record())
    return summary


@flow(name="score-stages")
def score_stages_flow(store: str, small: str, large: str, videos: list[str], settings: ScoreSettings,
                      progress: bool = False) -> ScoreResult:
    """`score_videos` with its passes as tasks on this flow's task runner."""
    return score_videos(store, cached_checkpoint(small), cached_checkpoint(large), settings.budget, videos=videos,
                        router=settings.router, frame_mode=settings.frame_mode, compute=settings.compute,
                        mapper=TaskMap(progress=progress), fusion=settings.fusion)


@flow(name="score")
def score_flow(
    dataset: str,
    root: str | None = None,
    small: str | None = None,
    large: str | None = None,
    run_id: str | None = None,
    settings: ScoreSettings = ScoreSettings(),
    runner: RunnerSpec = RunnerSpec(),
    progress: bool = False,
) -> ScoreSummary:
    """Score `<root>/stores/<dataset>.zarr` (test split) and write
    `<root>/scores/{clips,frames,events,runs}/dataset=<dataset>/run=<id>/`.

    `settings`: the budget, router, frame mode, compute and events (`ScoreSettings`, checked when
    built; a deployment gives them as nested fields); `runner`: where the per-video tasks run.
    """
    t0 = datetime.now(timezone.utc)
    root = root or default_root()
    run = run_id or t0.strftime("%Y%m%dT%H%M%SZ")
    url, small_ck, large_ck = score_inputs(root, dataset, run, small, large, settings.compute, here=runner.dask_address is None)
    stages = score_stages_flow.with_options(task_runner=task_runner(runner))
    result = stages(url, small_ck.path, large_ck.path, video_list(url, None, "test"), settings, progress=progress)
    return write_run_task(root, dataset, run, result, small_ck.path, large_ck.path, settings, t0)
