"""Pipeline flow: ingest, train (when no checkpoint is there), score and report, for one or more datasets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from vad.flows.ingest import ingest_flow
from vad.flows.score import score_flow
from vad.flows.train import train_flow
from vad.tasks.evaluation.artifacts import publish_report
from vad.tasks.evaluation.metrics import Protocol
from vad.tasks.evaluation.report import RunRef, build_report
from vad.tasks.inference.routing import BatchBudget
from vad.tasks.inference.scoring import ScoreSettings
from vad.tasks.learning.checkpoint import find_checkpoint
from vad.tasks.learning.training import TrainConfig
from vad.tasks.sources.ingest import Preprocess, parse_size
from vad.tasks.workspace import default_root

from vad.errors import NotFoundError


@dataclass
class PipelineSummary:
    report: str
    headline: object  # pandas DataFrame of the report's headline table
    failures: dict[str, str] = field(default_factory=dict)  # dataset/video -> reason


@task(name="report", cache_policy=NO_CACHE)
def report_task(root: str, refs: list[RunRef], name: str, protocol: Protocol) -> str:
    return str(build_report(root, refs, name=name, protocol=protocol))


def _has_checkpoint(root: str, dataset: str, role: str) -> bool:
    try:
        find_checkpoint(root, dataset, role)
        return True
    except NotFoundError:
        return False


@flow(name="pipeline")
def pipeline_flow(
    datasets: list[str],
    sources: list[str] | None = None,
    root: str | None = None,
    budget: float = 0.2,
    small_arch: str | None = None,
    large_arch: str | None = None,
    size: str | None = None,
    gray: bool | None = None,
    small_epochs: int = 20,
    large_epochs: int = 20,
    max_minutes: float | None = None,
    report_name: str = "latest",
    smooth_sigma: float = 0.0,
    minmax: bool = False,
    progress: bool = False,
) -> PipelineSummary:
    """For each dataset: ingest its source (when given), train the small and large models unless a
    checkpoint is already in `<root>/checkpoints/<dataset>/`, score every clip with both models
    (the run the Pareto sweep simulates budgets from) and at `budget`, then write one report.
    `smooth_sigma` and `minmax` switch on the non-standard protocol variants (labelled in the report)."""
    import pandas as pd

    root = root or default_root()
    # every setting is checked before any work
    protocol = Protocol(smooth_sigma=smooth_sigma, minmax=minmax)
    channels = None if gray is None else (1 if gray else 3)
    training = {
        role: TrainConfig(role=role, arch=arch, epochs=epochs, size=parse_size(size) if size else None, channels=channels,
                          max_minutes=max_minutes)
        for role, arch, epochs in (("small", small_arch, small_epochs), ("large", large_arch, large_epochs))
    }
    every, routed_settings = ScoreSettings(BatchBudget(1.0)), ScoreSettings(BatchBudget(budget))
    failures: dict[str, str] = {}
    refs = []
    for i, dataset in enumerate(datasets):
        if sources:
            # frames are stored at the source's size (model input is resized on the fly), gray when asked
            state = ingest_flow(source=sources[i], dataset=dataset, root=root, prep=Preprocess(gray=bool(gray)),
                                return_state=True)
            summary = state.result(raise_on_failure=False)
            if isinstance(summary, BaseException):
                raise summary
            failures.update({f"{dataset}/{v}": why for v, why in summary.failures.items()})
        for role, config in training.items():
            if not _has_checkpoint(root, dataset, role):
                train_flow(dataset=dataset, root=root, config=config, progress=progress)
        score_flow(dataset=dataset, root=root, run_id=f"{report_name}-all", settings=every, progress=progress)
        routed = f"{report_name}-budget-{budget:g}"
        score_flow(dataset=dataset, root=root, run_id=routed, settings=routed_settings, progress=progress)
        refs.append(RunRef(dataset, routed, sweep_run_id=f"{report_name}-all"))
    folder = report_task(root, refs, report_name, protocol)
    headline = pd.read_parquet(Path(folder) / "metrics.parquet")
    publish_report(folder, headline)
    return PipelineSummary(report=folder, headline=headline, failures=failures)
