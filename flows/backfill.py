"""Backfill flow: score every video of an archive (folder or fsspec URL) dated within a range, in
batches, one task per video; videos already scored with the same models and parameters are skipped.

The nightly deployment runs this flow over a watch folder (every video not scored yet, or the last
few days with `lookback_days`). A run holds its run id's lock while it works (a second run of the
same dataset and run id waits up to `settings.lock_timeout_s`) and decodes into a store of its own,
never the dataset's (`vad.tasks.operations.archive.archive_run`). A run where a video failed
ends Failed (the other videos' rows are written), as `ingest` does and as the CLI exits 1; its
summary is the state's data either way.
"""

from __future__ import annotations

import sys
from datetime import date
from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State
from pydantic import Field
from vad.flows.ingest import retry_transient
from vad.tasks.operations.archive import (
    ArchiveVideo,
    BackfillPlan,
    BackfillSettings,
    VideoOutcome,
    archive_run,
    finish_backfill,
    plan_backfill,
    record_outcome,
    score_archive_video,
)
from vad.tasks.operations.runners import RunnerSpec, completed, task_runner
from vad.tasks.workspace import default_root


@task(
    name="score-archive-video", task_run_name="archive-{video.video_id}", retries=2, retry_delay_seconds=5,
    retry_condition_fn=retry_transient, cache_policy=NO_CACHE,
)
def archive_video_task(plan: BackfillPlan, video: ArchiveVideo) -> VideoOutcome:
    s = plan.settings
    return score_archive_video(plan.root, plan.dataset, plan.run_id, video, plan.scoring, key=plan.key, params=plan.params,
                               rescore=s.rescore, keep_frames=s.keep_frames)


@flow(name="backfill-batches")
def backfill_batches_flow(plan: BackfillPlan) -> tuple[list[VideoOutcome], dict[str, str]]:
    """Submit one batch of videos at a time; record each failure as a row of the failures table."""
    outcomes, failures = [], {}
    for i, batch in enumerate(plan.batches, 1):
        futures = {archive_video_task.submit(plan, v): v for v in batch}
        for future in completed(list(futures)):
            video, out = futures[future], future.result(raise_on_failure=False)
            why = record_outcome(plan.root, plan.dataset, plan.run_id, video, out)
            if why is None:
                outcomes.append(out)
            else:
                failures[video.video_id] = why
        get_run_logger().info("batch %d/%d: %d videos done, %d failed so far", i, len(plan.batches), len(outcomes), len(failures))
    return outcomes, failures


@flow(name="backfill")
def backfill_flow(
    archive: str,
    dataset: str,
    since: date | None = None,
    until: date | None = None,
    lookback_days: Annotated[int, Field(ge=0, le=36500)] | None = None,
    root: str | None = None,
    small: str | None = None,
    large: str | None = None,
    run_id: str = "archive",
    settings: BackfillSettings = BackfillSettings(),
    runner: RunnerSpec = RunnerSpec(),
) -> State:
    """Ingest and score each video of `archive` dated in [since, until] (or the last `lookback_days`
    days; neither: every video) into run `run_id` of `dataset`, with the dataset's checkpoints (or
    `small`/`large`). `settings` (`BackfillSettings`, checked when built) says how: the scoring
    settings, the batch size, whether frames are kept, how long to wait for another process holding
    the run. A video's frames are dropped once its rows are written, unless `settings.keep_frames`.
    Ends Failed (carrying the `BackfillSummary`) when a video it tried failed."""
    plan = plan_backfill(archive, dataset, root=root or default_root(), run_id=run_id, since=since, until=until,
                         lookback_days=lookback_days, small=small, large=large, settings=settings,
                         here=runner.dask_address is None)
    stages = backfill_batches_flow.with_options(task_runner=task_runner(runner))
    with archive_run(plan, on_wait=_say) as store:  # the run's lock and store, for the whole pass
        outcomes, failures = stages(plan) if plan.videos else ([], {})
        summary = finish_backfill(plan, store, outcomes, failures)  # run.json, written last
    get_run_logger().info(summary.text())
    n = len(outcomes) + len(failures)
    if summary.any_failed:
        return Failed(message=f"{len(failures)} of {n} videos failed", data=summary)
    return Completed(message=f"{n} videos; scored {summary.scored}, skipped {summary.skipped}, failed {len(failures)}",
                     data=summary)


def _say(line: str) -> None:
    """A line for the run's log and for the terminal (the CLI keeps Prefect's own log lines quiet)."""
    get_run_logger().warning(line)
    print(line, file=sys.stderr, flush=True)
