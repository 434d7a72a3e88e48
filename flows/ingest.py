"""Ingest flow: list a dataset's videos and decode each into the clip store, one task per video."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State
from tqdm import tqdm
from vad.storage import ClipStore
from vad.tasks.operations.runners import RunnerSpec, completed, task_runner
from vad.tasks.sources.datasets import VideoSource, survey
from vad.tasks.sources.ingest import (
    IngestResult,
    Preprocess,
    describe_failure,
    ingest_video,
    require_training_footage,
)
from vad.tasks.workspace import default_root, discard_empty_store, store_url

from vad.errors import DatasetLayoutError, FFmpegError, PipelineError

Format = Literal["auto", "ucsd", "avenue", "shanghaitech", "ucf-crime", "folder"]


def retry_transient(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's retry hook signature
    """Retry only FFmpeg failures marked transient (killed, timed out, I/O error), never a corrupt file.

    Prefect asks this before every retry, in the process that runs the task, so it is also where
    that process learns to log an expected failure in one line (`OneLineFailures`).
    """
    OneLineFailures.install()
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, FFmpegError) and exc.transient


class OneLineFailures(logging.Filter):
    """Drops the traceback from Prefect's task-run log records of a `PipelineError`.

    Prefect logs the last failure of a task that had retries ("Retries are exhausted") with its
    traceback. For an expected failure (a corrupt video, a stalled source) the error's own message
    already says what went wrong and where; the traceback would bury it.
    """

    @classmethod
    def install(cls) -> None:
        logger = logging.getLogger("prefect.task_runs")
        if not any(isinstance(f, cls) for f in logger.filters):
            logger.addFilter(cls())

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PipelineError):
            record.exc_info, record.exc_text = None, None
        return True


@task(
    name="ingest-video", task_run_name="ingest-{source.video_id}", retries=2, retry_delay_seconds=2,
    retry_condition_fn=retry_transient, cache_policy=NO_CACHE,
)
def ingest_video_task(store: str, source: VideoSource, prep: Preprocess, dataset: str, force: bool) -> IngestResult:
    return ingest_video(store, source, prep, dataset=dataset, force=force)


@dataclass
class IngestSummary:
    dataset: str
    store: str
    results: list[IngestResult] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # video id (or path, if it has none) -> one-line reason
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # one line per id that had to change, per label or split update

    @property
    def frames(self) -> int:
        return sum(r.frames for r in self.results if r.status == "ingested")

    @property
    def ingested(self) -> int:
        return sum(r.status == "ingested" for r in self.results)

    @property
    def updated(self) -> int:
        return sum(r.status == "updated" for r in self.results)

    @property
    def skipped(self) -> int:
        return sum(r.status == "skipped" for r in self.results)


@flow(name="ingest-videos")
def ingest_videos_flow(url: str, videos: list[VideoSource], prep: Preprocess, dataset: str, force: bool) -> IngestSummary:
    futures = {ingest_video_task.submit(url, v, prep, dataset, force): v.video_id for v in videos}
    summary = IngestSummary(dataset, url)
    with tqdm(total=len(futures), unit="video", desc=f"ingest {dataset}", disable=None) as bar:
        for future in completed(list(futures)):
            outcome = future.result(raise_on_failure=False)
            if isinstance(outcome, IngestResult):
                summary.results.append(outcome)
            else:
                summary.failures[futures[future]] = describe_failure(outcome)
            bar.update()
    summary.results.sort(key=lambda r: (r.split != "train", r.video_id))
    return summary


@flow(name="ingest")
def ingest_flow(
    source: str,
    dataset: str,
    root: str | None = None,
    format: Format = "auto",
    prep: Preprocess = Preprocess(),
    force: bool = False,
    runner: RunnerSpec = RunnerSpec(),
    require_train: bool = False,
) -> State:
    """Ingest every video of the dataset at `source` into `<root>/stores/<dataset>.zarr`, one task per
    video on the chosen task runner. `prep` (`Preprocess`, checked when built) says how frames are
    stored: size, gray or RGB, frame rate, frames per chunk. `require_train` (a run that trains next)
    refuses, before decoding anything, a dataset with no training footage here or in the store.

    Videos that fail, when listed or when decoded, are reported in the summary and the others
    complete; the run ends Failed (carrying the summary) when any video failed. A video whose
    labels or split changed is updated in place, with a line in the summary's warnings.
    """
    t0 = time.perf_counter()
    found = survey(source, format)
    videos = found.videos
    url = store_url(root or default_root(), dataset)
    try:
        require_training_footage(videos, source, store_url=url)
        untrainable = None
    except DatasetLayoutError as exc:
        if require_train:
            raise
        untrainable = str(exc)  # fine for footage to score with an existing model: a warning
    ClipStore.open_or_create(url, dataset=dataset)  # once, before the per-video writers start
    stage = ingest_videos_flow.with_options(task_runner=task_runner(runner))
    summary = stage(url, videos, prep, dataset, force)
    if not summary.results:
        discard_empty_store(url)  # every video failed: no empty store left behind
    summary.failures = {**found.failures, **summary.failures}
    summary.warnings = [*found.warnings, *(r.note for r in summary.results if r.note)]
    if untrainable and summary.results:
        summary.warnings.append(untrainable)
    summary.seconds = time.perf_counter() - t0
    n = len(videos) + len(found.failures)
    if summary.failures:
        return Failed(message=f"{len(summary.failures)} of {n} videos failed", data=summary)
    return Completed(message=f"{n} videos", data=summary)

