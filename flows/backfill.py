"""Backfill flow: score every video of an archive (folder or fsspec URL) dated within a range, in
batches, one task per video; videos already scored with the same models and parameters are skipped.

The nightly deployment runs this flow over a watch folder (every video not scored yet, or the last
few days with `lookback_days`). A run holds its run id's lock while it works (a second run of the
same dataset and run id waits up to `lock_timeout_s`) and decodes into a store of its own, never the
dataset's (`vad.tasks.operations.archive.archive_run`).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field
from vad.flows.ingest import retry_transient
from vad.tasks.operations.archive import (
    ArchiveSettings,
    ArchiveVideo,
    BackfillSettings,
    VideoOutcome,
    archive_run,
    backfill_inputs,
    list_archive,
    record_outcome,
    score_archive_video,
    write_archive_manifest,
)
from vad.tasks.operations.runners import RunnerSpec, completed, task_runner
from vad.tasks.workspace import default_root


@task(
    name="score-archive-video", task_run_name="archive-{video.video_id}", retries=2, retry_delay_seconds=5,
    retry_condition_fn=retry_transient, cache_policy=NO_CACHE,
)
def archive_video_task(root: str, dataset: str, run_id: str, video: ArchiveVideo, settings: ArchiveSettings, key: str,
                       params: dict, rescore: bool, keep_frames: bool) -> VideoOutcome:
    return score_archive_video(root, dataset, run_id, video, settings, key=key, params=params, rescore=rescore,
                               keep_frames=keep_frames)


@dataclass
class BackfillSummary:
    archive: str
    dataset: str
    run_id: str
    since: date | None
    until: date | None
    outcomes: list[VideoOutcome] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # video id -> one-line reason
    seconds: float = 0.0
    root: str = ""
    frames_kept_in: str = ""  # the run's store, when its frames are kept

    @property
    def scored(self) -> int:
        return sum(o.status == "scored" for o in self.outcomes)

    @property
    def skipped(self) -> int:
        return sum(o.status == "skipped" for o in self.outcomes)

    def text(self) -> str:
        span = f"{self.since or 'the start'} to {self.until or 'today'}"
        n = len(self.outcomes) + len(self.failures)
        frames = sum(o.frames for o in self.outcomes)
        lines = [
            f"backfill {self.dataset} (run {self.run_id}) from {self.archive}, {span}: {n} videos; scored {self.scored}, "
            f"skipped {self.skipped} (already scored with these models), failed {len(self.failures)}; "
            f"{frames:,} frames scored in {self.seconds:.1f} s",
            f"tables: {self.root.rstrip('/')}/scores/{{clips,frames,videos,failures}}/dataset={self.dataset}/run={self.run_id}/",
        ]
        if self.frames_kept_in:
            lines.append(f"frames kept in {self.frames_kept_in}")
        lines += [f"FAILED {video}: {why}" for video, why in self.failures.items()]
        return "\n".join(lines)


@flow(name="backfill-batches")
def backfill_batches_flow(root: str, dataset: str, run_id: str, batches: list[list[ArchiveVideo]], settings: ArchiveSettings,
                          key: str, params: dict, rescore: bool = False,
                          keep_frames: bool = False) -> tuple[list[VideoOutcome], dict[str, str]]:
    """Submit one batch of videos at a time; record each failure as a row of the failures table."""
    logger = get_run_logger()
    outcomes, failures = [], {}
    for i, batch in enumerate(batches, 1):
        futures = {archive_video_task.submit(root, dataset, run_id, v, settings, key, params, rescore, keep_frames): v
                   for v in batch}
        for future in completed(list(futures)):
            video, out = futures[future], future.result(raise_on_failure=False)
            why = record_outcome(root, dataset, run_id, video, out)
            if why is None:
                outcomes.append(out)
            else:
                failures[video.video_id] = why
        logger.info("batch %d/%d: %d videos done, %d failed so far", i, len(batches), len(outcomes), len(failures))
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
) -> BackfillSummary:
    """Ingest and score each video of `archive` dated in [since, until] (or the last `lookback_days`
    days; neither: every video) into run `run_id` of `dataset`, with the dataset's checkpoints (or
    `small`/`large`). `settings` (`BackfillSettings`, checked when built) says how: the scoring
    settings, the batch size, whether frames are kept, how long to wait for another process holding
    the run. A video's frames are dropped once its rows are written, unless `settings.keep_frames`."""
    t0 = time.perf_counter()
    root = root or default_root()
    since, until, small_ck, large_ck = backfill_inputs(root, dataset, run_id, since, until, lookback_days, small, large,
                                                       settings.scoring.compute, here=runner.dask_address is None)
    scoring = ArchiveSettings(small_ck.path, large_ck.path, settings.scoring)
    params = scoring.params()
    key = scoring.key(params)
    videos = list_archive(archive, since=since, until=until, date_from=settings.date_from)
    logger = get_run_logger()
    size = settings.batch_size
    batches = [videos[i : i + size] for i in range(0, len(videos), size)]
    summary = BackfillSummary(archive, dataset, run_id, since, until, root=root)
    held = archive_run(root, dataset, run_id, purpose=f"score archive run {run_id!r} of {dataset!r} from {archive}",
                       keep_frames=settings.keep_frames, timeout=settings.lock_timeout_s,
                       on_wait=lambda line: _say(logger, line))
    with held as store:
        summary.frames_kept_in = store if settings.keep_frames else ""
        if batches:
            stages = backfill_batches_flow.with_options(task_runner=task_runner(runner))
            summary.outcomes, summary.failures = stages(root, dataset, run_id, batches, scoring, key, params,
                                                        settings.rescore, settings.keep_frames)
        summary.seconds = time.perf_counter() - t0
        logger.info(summary.text())
        write_archive_manifest(
            root, dataset, run_id, archive=archive, since=since, until=until, date_from=settings.date_from, key=key,
            params=params, keep_frames=settings.keep_frames, store=store, listed=len(videos), scored=summary.scored,
            skipped=summary.skipped, failed=summary.failures, seconds=summary.seconds, compute=settings.scoring.compute,
        )
    return summary


def _say(logger: logging.Logger | logging.LoggerAdapter, line: str) -> None:
    """A line for the run's log and for the terminal (the CLI keeps Prefect's own log lines quiet)."""
    logger.warning(line)
    print(line, file=sys.stderr, flush=True)
