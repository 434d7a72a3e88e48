"""Pipeline flow: ingest, train (when no checkpoint is there), score and report, for one or more datasets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm
from vad.flows.ingest import IngestSummary, ingest_flow
from vad.flows.score import score_flow
from vad.flows.train import train_flow
from vad.storage import ClipStore
from vad.tasks.evaluation.artifacts import publish_report
from vad.tasks.inference.events import EventSettings
from vad.tasks.evaluation.metrics import Protocol, store_has_labels
from vad.tasks.evaluation.report import RunRef, build_report, read_headline
from vad.tasks.runtime.compute import Compute
from vad.tasks.inference.routing import BatchBudget
from vad.tasks.inference.scoring import FrameMode, ScoreSettings
from vad.tasks.runtime.checkpoint import find_checkpoint
from vad.tasks.learning.training import TrainConfig
from vad.tasks.sources.ingest import Preprocess, parse_size
from vad.tasks.workspace import default_root, store_url

from vad.errors import NotFoundError


@dataclass
class PipelineSummary:
    report: str
    headline: object  # pandas DataFrame of the report's headline table
    failures: dict[str, str] = field(default_factory=dict)  # dataset/video -> reason


@task(name="report", cache_policy=NO_CACHE)
def report_task(root: str, refs: list[RunRef], name: str, protocol: Protocol) -> tuple[str, object]:
    """Build the report, publish it as artifacts; its folder and headline table."""
    folder = build_report(root, refs, name=name, protocol=protocol)
    headline = read_headline(folder)
    publish_report(folder, headline)
    return str(folder), headline


def _has_checkpoint(root: str, dataset: str, role: str) -> bool:
    try:
        find_checkpoint(root, dataset, role)
        return True
    except NotFoundError:
        return False


def _say(on: bool, text: str) -> None:
    """One stage's lines on stdout when the run shows progress (between progress bars, not through them)."""
    if on:
        tqdm.write(text)


def _store_text(url: str) -> str:
    """What a clip store holds: videos by split, frames, frame size, channels and frame rate."""
    videos = list(ClipStore.open(url).videos())
    train = sum(v.split == "train" for v in videos)
    sizes = "/".join(sorted({f"{v.frames.shape[1]}x{v.frames.shape[2]}" for v in videos}))
    channels = "/".join(sorted({"gray" if v.frames.shape[3] == 1 else "RGB" for v in videos}))
    rates = sorted({f"{float(v.attrs['fps']):g}" for v in videos if v.attrs.get("fps")})
    unrated = any(not v.attrs.get("fps") for v in videos)  # frame images: FFmpeg gives them no rate
    fps = ", ".join(([f"{'/'.join(rates)} fps"] if rates else []) + (["no frame rate of their own (frame images)"] if unrated else []))
    return (f"store {url}: {len(videos)} videos ({train} train, {len(videos) - train} test), "
            f"{sum(v.n_frames for v in videos):,} frames at {sizes} {channels}, {fps}")


def _ingest_text(summary: IngestSummary) -> str:
    n = len(summary.results) + len(summary.failures)
    updated = f"updated {summary.updated} (labels or split), " if summary.updated else ""
    return (f"ingest {summary.dataset}: {n} videos; ingested {summary.ingested}, {updated}skipped {summary.skipped} "
            f"(unchanged), failed {len(summary.failures)}; {summary.frames:,} frames in {summary.seconds:.1f} s")


def _reused(root: str, dataset: str, role: str) -> str | None:
    """The line for the `role` checkpoint a run uses as it is (and why), or None when there is none to use."""
    try:
        path = Path(find_checkpoint(root, dataset, role))
    except NotFoundError:
        return None
    n = len(list(path.parent.glob(f"{role}-*.pt")))
    why = f"the default architecture's, of {n} {role} checkpoints there" if n > 1 else \
        f"the one {role}-*.pt there; delete it to train again"
    return f"{role} model: using {path} ({why})"


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
    min_event_s: float = 0.5,
    merge_gap_s: float = 1.0,
    frame_mode: FrameMode = "clip",
    compute: Compute = Compute(),
    progress: bool = False,
    fusion: str | None = None,
) -> PipelineSummary:
    """For each dataset: ingest its source (when given), train the small and large models unless a
    checkpoint is already in `<root>/checkpoints/<dataset>/`, score every clip with both models
    (the run the Pareto sweep simulates budgets from) and at `budget`, then write one report.
    `smooth_sigma` and `minmax` switch on the non-standard protocol variants (labelled in the report);
    `min_event_s` and `merge_gap_s` say how frame scores become events (`EventSettings`); `frame_mode` and
    `compute` (device, batch, precision) are those of both score runs; `fusion` the rule for escalated
    clips (None: the large checkpoint's choice on validation). With `progress`, each stage says
    what it did on stdout."""
    root = root or default_root()
    # every setting is checked before any work
    protocol = Protocol(smooth_sigma=smooth_sigma, minmax=minmax)
    channels = None if gray is None else (1 if gray else 3)
    training = {
        role: TrainConfig(role=role, arch=arch, epochs=epochs, size=parse_size(size) if size else None, channels=channels,
                          max_minutes=max_minutes)
        for role, arch, epochs in (("small", small_arch, small_epochs), ("large", large_arch, large_epochs))
    }
    events = EventSettings(min_event_s, merge_gap_s)
    every, routed_settings = (ScoreSettings(BatchBudget(b), frame_mode=frame_mode, compute=compute, events=events,
                                            fusion=fusion) for b in (1.0, budget))
    failures: dict[str, str] = {}
    refs = []
    for i, dataset in enumerate(datasets):
        if sources:
            # frames are stored at the source's size (model input is resized on the fly), gray when asked
            state = ingest_flow(source=sources[i], dataset=dataset, root=root, prep=Preprocess(gray=bool(gray)),
                                require_train=not all(_has_checkpoint(root, dataset, r) for r in training), return_state=True)
            summary = state.result(raise_on_failure=False)
            if isinstance(summary, BaseException):
                raise summary
            failures.update({f"{dataset}/{v}": why for v, why in summary.failures.items()})
            _say(progress, _ingest_text(summary))
        _say(progress, _store_text(store_url(root, dataset)))
        for role, config in training.items():
            reused = _reused(root, dataset, role)
            _say(progress, reused or f"{role} model: no {role}-*.pt in {root}/checkpoints/{dataset}/; training {config.arch}")
            if not reused:
                _say(progress, train_flow(dataset=dataset, root=root, config=config, progress=progress).summary())
        sweep = f"{report_name}-all" if store_has_labels(store_url(root, dataset)) else None
        if sweep:
            _say(progress, f"score {dataset}: every clip with both models (run {sweep}, for the cost-quality sweep)")
            _say(progress, score_flow(dataset=dataset, root=root, run_id=sweep, settings=every, progress=progress).text())
        else:
            _say(progress, f"score {dataset}: no labelled test footage, so no cost-quality sweep (it ranks budgets by labels)")
        routed = f"{report_name}-budget-{budget:g}"
        _say(progress, f"score {dataset}: routed at budget {budget:g} (run {routed})")
        _say(progress, score_flow(dataset=dataset, root=root, run_id=routed, settings=routed_settings, progress=progress).text())
        refs.append(RunRef(dataset, routed, sweep_run_id=sweep))
    _say(progress, f"report {report_name}: events, timelines and (where labels exist) metrics of {len(refs)} dataset(s)")
    folder, headline = report_task(root, refs, report_name, protocol)
    return PipelineSummary(report=folder, headline=headline, failures=failures)
