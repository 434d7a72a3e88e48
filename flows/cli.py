"""The `vad` command line: thin wrappers that run the flows and print a summary."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand

from vad.errors import ParameterError, PipelineError


class _Command(TyperCommand):
    """A command whose usage line names its arguments as click always has (`SOURCE`, `[OUT_DIR]`);
    typer 0.29 writes `{source}` instead."""

    def collect_usage_pieces(self, ctx) -> list[str]:  # noqa: ANN001
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = (param.metavar or param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


# Plain (click-style) help whatever typer and rich are installed: typer 0.29's rich panels print a
# `<bool>` value placeholder after flags that take no value.
app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode=None,
    help="Video anomaly detection with cost-aware model routing.",
)



def _print_version(value: bool) -> None:
    """`vad --version`: the installed package's version, before any command (and Prefect) starts."""
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"vad {version('video-anomaly-router')}")
        except PackageNotFoundError:
            typer.echo("vad (not installed: run `pip install -e .`)")
        raise typer.Exit(0)


@app.callback()
def _app(
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Video anomaly detection with cost-aware model routing."""


RunnerOpt = Annotated[str, typer.Option("--runner", help="Task runner: threads (in this process) or dask (a local Dask cluster).")]
DaskOpt = Annotated[Optional[str], typer.Option("--dask-address", help="Run the tasks on this Dask scheduler (tcp://HOST:8786); its workers need PREFECT_API_URL.")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="Threads (threads runner; default: the cores) or worker processes (local Dask; default 2).")]

SmallOpt = Annotated[Optional[str], typer.Option(help="Small-model checkpoint (default: the one small-*.pt in <root>/checkpoints/<dataset>/).")]
LargeOpt = Annotated[Optional[str], typer.Option(help="Large-model checkpoint (default: the one large-*.pt there).")]
_ROUTER_NOTE = " Any router option replaces the large checkpoint's router chosen on validation; the others take their defaults."
MarginOpt = Annotated[Optional[float], typer.Option(help="Gray-zone half-width around the threshold, on the band's scale (default 0.05)." + _ROUTER_NOTE)]
BandOpt = Annotated[Optional[str], typer.Option("--band", help="Gray-zone scale: rank (percentile distance) or odds (log factor of rarity against the threshold's; default rank).")]
OodOpt = Annotated[Optional[float], typer.Option("--ood-quantile", help="A clip is out of distribution above this quantile of held-out normal clips' embedding distances (default 0.99).")]
UnstableOpt = Annotated[Optional[float], typer.Option("--instability-quantile", help="A clip is unstable above this quantile of normal score variances (default 0.99).")]
SignalsOpt = Annotated[Optional[str], typer.Option("--signals", metavar="NAMES", help="Signals that may escalate, comma-separated: gray_zone, ood, unstable, scene_cut (default: all).")]
FrameModeOpt = Annotated[str, typer.Option("--frame-mode", help="Frame scores from covering clips' scores (clip) or their per-frame errors (frame).")]
FusionOpt = Annotated[Optional[str], typer.Option("--fusion", help="Escalated clips' score: replace (the large model's), mean or logit_mean of both calibrated scores (default: the large checkpoint's choice on validation, else replace).")]
MinEventOpt = Annotated[float, typer.Option("--min-event-s", help="Events (frames above the threshold) shorter than this many seconds are dropped.")]
MergeGapOpt = Annotated[float, typer.Option("--merge-gap-s", help="Events at most this many seconds apart are merged into one.")]
DeviceOpt = Annotated[str, typer.Option(help="Compute device: auto (CUDA when present), cpu, cuda or cuda:N.")]
BatchOpt = Annotated[Optional[int], typer.Option(help="Clips per batch (default: 8 on a CPU, measured on CUDA).")]
PrecisionOpt = Annotated[str, typer.Option(help="auto (bfloat16 on CUDA, float32 on a CPU), float32 or bfloat16.")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the models (3-20 s each before their first batch; pays on long runs).")]

RootOpt = Annotated[
    Optional[str],
    typer.Option("--root", help="Workspace for stores, checkpoints, scores and reports (default: $VAD_ROOT, else ./vad-workspace)."),
]


def _prefect_defaults(root: str) -> None:
    """Quiet, offline-friendly Prefect defaults for a one-machine run; the user's settings win.

    With no Prefect server configured, the temporary API keeps its database in the workspace
    (`<root>/.prefect`), not in the shared `~/.prefect`: a database migrated by another Prefect
    version in another environment stops the temporary server from starting.
    """
    if not os.environ.get("PREFECT_API_URL") and not os.environ.get("PREFECT_HOME") and "://" not in root:
        home = Path(root).expanduser().resolve() / ".prefect"
        home.mkdir(parents=True, exist_ok=True)  # Prefect's server exits if its home is missing
        os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # The temporary server logs its own shutdown races (events it had not flushed) as errors with
    # tracebacks; they concern Prefect's bookkeeping, not the run, so keep them off the terminal.
    os.environ.setdefault("PREFECT_LOGGING_SERVER_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def _root(root: str | None) -> str:
    from vad.tasks.workspace import default_root

    return root or default_root()


def _run_ingest(source: str, dataset: str, root: str, *, format: str, size: str | None, gray: bool, fps: float | None,
                force: bool, runner: tuple[str, str | None, int | None]) -> int:
    """Run the ingest flow, print its summary; 0 when every video went in, 1 when some failed."""
    from vad.tasks.sources.datasets import survey
    from vad.tasks.sources.datasets._base import require_dir
    from vad.tasks.sources.ingest import Preprocess, parse_size
    from vad.tasks.workspace import check_dataset_name

    # Fail in a second, before starting Prefect's server, on what can be checked cheaply.
    check_dataset_name(dataset)
    require_dir(Path(source).expanduser(), "dataset folder")
    prep = Preprocess(size=parse_size(size) if size else None, gray=gray, fps=fps)
    survey(source, format)  # the layout (and the format's name), as the flow lists it first
    spec = _runner(*runner)
    _prefect_defaults(root)
    from vad.flows.ingest import ingest_flow

    with _interruptible("interrupted; the videos already ingested are kept: run the same command to go on"):
        state = ingest_flow(source=source, dataset=dataset, root=root, format=format, prep=prep, force=force,  # type: ignore[arg-type]
                            runner=spec, return_state=True)  # type: ignore[arg-type]
    summary = state.result(raise_on_failure=False)
    if isinstance(summary, BaseException):
        raise summary
    n = len(summary.results) + len(summary.failures)
    typer.echo(
        f"ingest {dataset}: {n} videos; ingested {summary.ingested}, "
        + (f"updated {summary.updated} (labels or split), " if summary.updated else "") +
        f"skipped {summary.skipped} (unchanged), failed {len(summary.failures)}; "
        f"{summary.frames:,} frames in {summary.seconds:.1f} s ({summary.frames / max(summary.seconds, 1e-9):,.0f} frames/s)"
    )
    if summary.results:  # an ingest that ingested nothing leaves no store (flows/ingest.py)
        typer.echo(f"store: {summary.store}")
    for line in summary.warnings:  # ids that had to change (datasets/_base.py, unique_ids), label or split updates
        typer.echo(f"warning: {line}", err=True)
    for video, reason in summary.failures.items():
        typer.echo(f"FAILED {video}: {reason}", err=True)
    return 1 if summary.failures else 0


def _runner(runner: str, dask_address: str | None, workers: int | None):  # noqa: ANN202
    from vad.tasks.operations.runners import RunnerSpec

    return RunnerSpec(kind=runner, dask_address=dask_address, workers=workers)  # type: ignore[arg-type]


def _score_settings(budget: float | None, bucket: str | None, margin: float | None, ood_quantile: float | None,
                    instability_quantile: float | None, signals: str | None, frame_mode: str, device: str, batch: int | None,
                    precision: str, compile: bool, min_event_s: float = 0.5, merge_gap_s: float = 1.0,
                    fusion: str | None = None, band: str | None = None):  # noqa: ANN202
    """The `ScoreSettings` of `vad score` and `vad backfill` from their options (checked as built);
    with no router option the router is None: the large checkpoint's choice."""
    from vad.tasks.inference.events import EventSettings
    from vad.tasks.runtime.compute import Compute
    from vad.tasks.inference.routing import parse_budget, router_config
    from vad.tasks.inference.scoring import ScoreSettings

    return ScoreSettings(
        budget=parse_budget(budget, bucket),
        router=None if (margin, ood_quantile, instability_quantile, signals, band) == (None,) * 5
        else router_config(margin, ood_quantile, instability_quantile, signals, band),
        frame_mode=frame_mode, compute=Compute(device=device, batch=batch, precision=precision, compile=compile),  # type: ignore[arg-type]
        events=EventSettings(min_event_s, merge_gap_s), fusion=fusion,
    )


class Interrupted(Exception):
    """The user pressed Ctrl-C (or the process got SIGINT/SIGTERM) during a run."""


# After an interrupt, the most seconds Prefect may take to record it and stop its temporary server.
# A SIGTERM sent to the whole process group (`timeout`, systemd, `docker stop`) stops that server
# too, and Prefect's client then retries it for over a minute before raising an httpx error.
_GRACE_S = 5.0
_said = threading.Lock()
_owns_process = False  # True in the console script (`main()` reading sys.argv): it may end the process


def _say_interrupted(message: str) -> None:
    """Print the interrupt's one line, once (from `main` or from the watchdog, whichever is first)."""
    if _said.acquire(blocking=False):
        sys.stdout.flush()
        typer.echo(message, err=True)
        sys.stderr.flush()


def _watchdog(message: str) -> None:
    """End the process `_GRACE_S` after an interrupt if it is still there: the line, then the
    processes it started (Prefect's temporary server), then an exit that runs no more clean-up."""
    time.sleep(_GRACE_S)
    _say_interrupted(message)
    with contextlib.suppress(Exception):
        import psutil  # a dependency of dask[distributed]

        for child in psutil.Process().children(recursive=True):
            child.terminate()
    os._exit(130)


def _silence_prefect_internal() -> None:
    """Switch off Prefect's internal loggers (prefect._internal and every one below it). They
    decide what to emit by a setting, not by their level (Prefect's SafeLogger), so a level does
    not silence them; a disabled logger emits nothing."""
    names = [name for name in list(logging.root.manager.loggerDict)
             if name == "prefect._internal" or name.startswith("prefect._internal.")]
    for name in {"prefect._internal", *names}:
        logging.getLogger(name).disabled = True


@contextlib.contextmanager
def _interruptible(on_interrupt: str):
    """Run a flow for the CLI: Prefect's own run logs are silenced (the CLI prints the outcome, and
    an expected error becomes one `error:` line in `main`), and Ctrl-C or SIGTERM becomes one line
    and exit code 130, within `_GRACE_S` seconds.

    Prefect turns an interrupt into a crashed run and then may fail to report it once its temporary
    server has stopped too; the flag set here says that whatever comes out is the interrupt. During
    a flow Prefect installs its own SIGTERM handler, so the signal is also watched through
    `signal.set_wakeup_fd`, which every Python-level handler writes to.
    """
    interrupted = threading.Event()
    # Prefect stays quiet afterwards too: its temporary server logs its shutdown at exit.
    prefect_logger = logging.getLogger("prefect")

    def tripped() -> None:
        if not interrupted.is_set():
            interrupted.set()
            # prefect._internal does not propagate to "prefect" (Prefect's logging.yml): its services
            # would log their unsent items as an ERROR after the interrupt line
            _silence_prefect_internal()
            if _owns_process:
                threading.Thread(target=_watchdog, args=(on_interrupt,), daemon=True).start()

    def handler(signum, frame):  # noqa: ANN001
        tripped()
        raise KeyboardInterrupt

    def watch(fd: int) -> None:
        with contextlib.suppress(OSError):
            while data := os.read(fd, 64):
                if {signal.SIGINT, signal.SIGTERM} & set(data):
                    tripped()
        os.close(fd)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)  # signal handlers run in the main thread
    threading.Thread(target=watch, args=(read_fd,), daemon=True).start()
    prefect_logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    except BaseException:
        if interrupted.is_set():
            raise Interrupted(on_interrupt) from None
        raise
    finally:
        signal.set_wakeup_fd(previous_fd)
        os.close(write_fd)  # the watching thread reads the end of the pipe and closes its end
        for sig, old in previous.items():
            signal.signal(sig, old)


@app.command(cls=_Command)
def ingest(
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="Dataset folder (or a folder of videos / frame folders).")],
    dataset: Annotated[str, typer.Option(help="Dataset name; the store is <root>/stores/<name>.zarr.")],
    format: Annotated[str, typer.Option("--format", help="auto|ucsd|avenue|shanghaitech|ucf-crime|folder")] = "auto",
    size: Annotated[Optional[str], typer.Option(help="Stored frame size HEIGHTxWIDTH (default: the source's, scaled down to 480 rows if taller).")] = None,
    gray: Annotated[bool, typer.Option("--gray/--rgb", help="Store one gray channel or three RGB channels.")] = False,
    fps: Annotated[Optional[float], typer.Option(help="Resample to this frame rate (unlabelled footage only).")] = None,
    force: Annotated[bool, typer.Option(help="Re-ingest videos even when unchanged.")] = False,
    runner: RunnerOpt = "threads",
    dask_address: DaskOpt = None,
    workers: WorkersOpt = None,
    root: RootOpt = None,
) -> None:
    """Decode a dataset's videos into its Zarr clip store (unchanged videos are skipped)."""
    raise typer.Exit(_run_ingest(source, dataset, _root(root), format=format, size=size, gray=gray, fps=fps, force=force,
                                 runner=(runner, dask_address, workers)))  # checked after the cheap checks (it imports torch)


@app.command(cls=_Command)
def train(
    dataset: Annotated[str, typer.Option(help="Dataset whose store <root>/stores/<name>.zarr holds the normal training videos.")],
    model: Annotated[str, typer.Option("--model", help="Which model to train: small (scores every clip) or large (re-scores escalated clips).")] = "small",
    arch: Annotated[Optional[str], typer.Option(help="Architecture: motion_patch, objects, vae3d, topheavy, ae3d, resnet3d_attn, predictor, resnet18_ae, forecaster (default: motion_patch for small, objects for large; those two are fitted, not trained by gradient descent).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", metavar="KEY=VALUE", help="Architecture setting KEY=VALUE, repeatable (e.g. --set channels=16,32,64,128 --set step=4 for predictor); see docs/models.md.")] = None,
    variant: Annotated[Optional[str], typer.Option("--variant", metavar="NAME", help="Use this declared variant of the architecture instead of choosing one on validation (see docs/models.md).")] = None,
    epochs: Annotated[int, typer.Option(help="Most epochs; early stopping may end sooner.")] = 20,
    batch: Annotated[int, typer.Option(help="Clips per batch.")] = 8,
    lr: Annotated[float, typer.Option(help="Adam learning rate (halved when the held-out loss stalls).")] = 1e-3,
    size: Annotated[Optional[str], typer.Option(help="Model input HEIGHTxWIDTH (default: the architecture's, 128x128); frames are resized on the fly.")] = None,
    gray: Annotated[Optional[bool], typer.Option("--gray/--rgb", help="Model input channels (default: the store's).")] = None,
    clip_len: Annotated[int, typer.Option("--clip-len", help="Frames per clip.")] = 16,
    stride: Annotated[int, typer.Option(help="Frames between clip starts when scoring and calibrating (training uses half).")] = 8,
    motion: Annotated[bool, typer.Option("--motion/--frames", help="Model input: frame differences (moving things) or the frames themselves.")] = False,
    flow: Annotated[bool, typer.Option("--flow", help="Model input: dense optical flow (x, y, speed; Lucas-Kanade on the luma) instead of frames. Such a model can teach --distill.")] = False,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Horizontal-flip augmentation.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the split, the initial weights and the batch order.")] = 0,
    calibration_folds: Annotated[int, typer.Option("--calibration-folds", help="Fitted models: fit on all training videos and calibrate out of fold in this many folds (each scored by a fit on the others); 1: calibrate on a held-out split, one fit.")] = 2,
    max_minutes: Annotated[Optional[float], typer.Option("--max-minutes", help="Stop after the epoch that passes this many minutes.")] = None,
    pseudo: Annotated[float, typer.Option("--pseudo", help="Weight of the pseudo-anomaly head's loss (erased, shuffled, jittered copies of training clips); 0: off. See docs/models.md.")] = 0.0,
    distill: Annotated[Optional[str], typer.Option("--distill", help="Checkpoint of an optical-flow model (trained with --flow) whose frame scores this model learns to match; see docs/models.md.")] = None,
    distill_weight: Annotated[float, typer.Option("--distill-weight", help="Weight of the score-distillation loss.")] = 1.0,
    out: Annotated[Optional[str], typer.Option(help="Checkpoint path (default: <root>/checkpoints/<dataset>/<role>-<arch>.pt).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing checkpoint.")] = False,
    fresh: Annotated[bool, typer.Option(help="Ignore a saved training state instead of resuming from it.")] = False,
    root: RootOpt = None,
) -> None:
    """Train a model on a dataset's normal clips and write a calibrated checkpoint."""
    from vad.models import DEFAULT_ARCH
    from vad.storage import ClipStore
    from vad.tasks.learning.training import TrainConfig, check_target, parse_model_options
    from vad.tasks.sources.ingest import parse_size, require_training_footage
    from vad.tasks.workspace import checkpoint_path, store_url

    base = _root(root)
    if model not in ("small", "large"):
        raise ParameterError(f"--model must be small or large, got {model!r} (--arch chooses the architecture)")
    # Fail in a second, before Prefect's server starts: the config is checked as it is built, and the
    # store and the checkpoint path are looked at (training itself then plans from the store).
    config = TrainConfig(
        role=model, arch=arch, epochs=epochs, batch=batch, lr=lr, size=parse_size(size) if size else None,
        channels=None if gray is None else (1 if gray else 3), clip_len=clip_len, stride=stride, motion=motion, flow=flow,
        flip=flip, seed=seed, calibration_folds=calibration_folds, max_minutes=max_minutes, pseudo_weight=pseudo, distill=distill, distill_weight=distill_weight,
        model=parse_model_options(set_, arch or DEFAULT_ARCH.get(model, DEFAULT_ARCH["small"])), variant=variant,
    )
    target = out or checkpoint_path(base, dataset, model, str(config.arch))
    url = store_url(base, dataset)
    ClipStore.open(url)
    require_training_footage([], url, store_url=url)  # a store of test footage only: one line, not a crash later
    if distill and not Path(distill).expanduser().is_file():  # its kind and size are checked as training starts
        raise ParameterError(f"distillation teacher {distill} does not exist")
    check_target(target, overwrite=force)
    _prefect_defaults(base)
    from vad.flows.train import train_flow

    with _interruptible(f"interrupted; the last finished epoch is saved in {target}.state: run the same command to resume"):
        result = train_flow(dataset=dataset, root=base, config=config, out=target, force=force, resume=not fresh, progress=True)
    typer.echo(result.summary())


@app.command(cls=_Command)
def score(
    dataset: Annotated[str, typer.Option(help="Dataset whose store's test videos are scored.")],
    small: SmallOpt = None,
    large: LargeOpt = None,
    budget: Annotated[Optional[float], typer.Option(help="Escalate this fraction of clips, the hardest first (default 0.2).")] = None,
    bucket: Annotated[Optional[str], typer.Option(help="Token bucket per video instead: CAPACITY,REFILL (tokens added per clip).")] = None,
    run_id: Annotated[Optional[str], typer.Option("--run-id", help="Run id (default: the UTC time); re-using one replaces that run.")] = None,
    margin: MarginOpt = None,
    band: BandOpt = None,
    ood_quantile: OodOpt = None,
    instability_quantile: UnstableOpt = None,
    signals: SignalsOpt = None,
    frame_mode: FrameModeOpt = "clip",
    fusion: FusionOpt = None,
    min_event_s: MinEventOpt = 0.5,
    merge_gap_s: MergeGapOpt = 1.0,
    device: DeviceOpt = "auto",
    batch: BatchOpt = None,
    precision: PrecisionOpt = "auto",
    compile: CompileOpt = False,
    runner: RunnerOpt = "threads",
    dask_address: DaskOpt = None,
    workers: WorkersOpt = None,
    root: RootOpt = None,
) -> None:
    """Score a dataset with the small model, escalate within the budget to the large one, write Parquet tables."""
    from vad.tasks.inference.scoring import score_inputs

    base = _root(root)
    # Fail in a second, before Prefect's server starts: settings are checked as they are built, and
    # the store and checkpoints are read by the same function the flow starts with.
    settings = _score_settings(budget, bucket, margin, ood_quantile, instability_quantile, signals, frame_mode, device,
                               batch, precision, compile, min_event_s, merge_gap_s, fusion, band)
    spec = _runner(runner, dask_address, workers)
    _prefect_defaults(base)  # before anything imports Prefect, whose logging reads them at import
    _, small_ck, large_ck = score_inputs(base, dataset, run_id or "now", small, large, settings.compute,
                                         here=spec.dask_address is None)
    typer.echo(f"scoring {dataset} with {settings.budget.describe()}")
    for role, given, ck in (("small", small, small_ck), ("large", large, large_ck)):
        typer.echo(f"{role} model: {ck.path}" + ("" if given else _found_because(ck.path, role)))
    from vad.flows.score import score_flow

    with _interruptible("interrupted; no table of this run was left half-written: run the command again"):
        summary = score_flow(dataset=dataset, root=base, small=small, large=large, run_id=run_id, settings=settings,
                             runner=spec, progress=True)
    typer.echo(summary.text())


@app.command(cls=_Command)
def backfill(
    archive: Annotated[str, typer.Argument(metavar="ARCHIVE", help="Folder or fsspec URL of archived footage (video files, any depth).")],
    dataset: Annotated[str, typer.Option(help="Dataset (camera) whose checkpoints score the footage; its store is never written.")],
    since: Annotated[Optional[str], typer.Option(help="First date, YYYY-MM-DD (inclusive).")] = None,
    until: Annotated[Optional[str], typer.Option(help="Last date, YYYY-MM-DD (inclusive).")] = None,
    lookback_days: Annotated[Optional[int], typer.Option("--lookback-days", help="Instead of --since: the last N days up to today (UTC).")] = None,
    date_from: Annotated[str, typer.Option("--date-from", help="A video's date: auto (a date in its path, else its modification time), path or mtime.")] = "auto",
    run_id: Annotated[str, typer.Option("--run-id", help="Archive run the rows go to; one run holds each video once.")] = "archive",
    small: SmallOpt = None,
    large: LargeOpt = None,
    budget: Annotated[Optional[float], typer.Option(help="Escalate this fraction of each video's clips (default 0.2).")] = None,
    bucket: Annotated[Optional[str], typer.Option(help="Token bucket per video instead: CAPACITY,REFILL.")] = None,
    margin: MarginOpt = None,
    band: BandOpt = None,
    ood_quantile: OodOpt = None,
    instability_quantile: UnstableOpt = None,
    signals: SignalsOpt = None,
    frame_mode: FrameModeOpt = "clip",
    fusion: FusionOpt = None,
    min_event_s: MinEventOpt = 0.5,
    merge_gap_s: MergeGapOpt = 1.0,
    device: DeviceOpt = "auto",
    batch: BatchOpt = None,
    precision: PrecisionOpt = "auto",
    compile: CompileOpt = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Videos submitted together.")] = 8,
    rescore: Annotated[bool, typer.Option(help="Score videos again even when already scored with these models.")] = False,
    keep_frames: Annotated[bool, typer.Option("--keep-frames", help="Keep the decoded frames in the run's store, <root>/archive/<dataset>/<run-id>/work.zarr (default: dropped once a video's rows are written).")] = False,
    runner: RunnerOpt = "threads",
    dask_address: DaskOpt = None,
    workers: WorkersOpt = None,
    root: RootOpt = None,
) -> None:
    """Ingest and score every video of an archive dated in a range; already-scored videos are skipped."""
    from vad.tasks.operations.archive import BackfillSettings, backfill_inputs

    base = _root(root)
    # Fail in a second, before Prefect's server starts: settings are checked as they are built, and
    # names, dates and checkpoints by the same function the flow starts with.
    first, last = (_parse_date(v, name) for v, name in ((since, "--since"), (until, "--until")))
    settings = BackfillSettings(
        scoring=_score_settings(budget, bucket, margin, ood_quantile, instability_quantile, signals, frame_mode, device,
                                batch, precision, compile, min_event_s, merge_gap_s, fusion, band),
        date_from=date_from, batch_size=batch_size, rescore=rescore, keep_frames=keep_frames,  # type: ignore[arg-type]
    )
    spec = _runner(runner, dask_address, workers)
    _prefect_defaults(base)  # before anything imports Prefect, whose logging reads them at import
    backfill_inputs(base, dataset, run_id, first, last, lookback_days, small, large, settings.scoring.compute,
                    here=spec.dask_address is None)
    from vad.flows.backfill import backfill_flow

    with _interruptible("interrupted; videos already scored are kept: run the same command to go on"):
        state = backfill_flow(archive=archive, dataset=dataset, since=first, until=last, lookback_days=lookback_days,
                              root=base, small=small, large=large, run_id=run_id, settings=settings, runner=spec,
                              return_state=True)
    summary = state.result(raise_on_failure=False)  # Failed, with the summary, when every video failed
    if isinstance(summary, BaseException):
        raise summary
    typer.echo(summary.text())
    raise typer.Exit(1 if summary.failures else 0)


def _found_because(path: str | None, role: str) -> str:
    """Why the lookup chose `path` (`find_checkpoint`): the only one of its role, or the default
    architecture's among several."""
    n = len(list(Path(str(path)).parent.glob(f"{role}-*.pt")))
    return f" (the default architecture's, of {n} {role} checkpoints there; --{role} PATH for another)" if n > 1 else ""


def _parse_date(text: str | None, option: str):  # noqa: ANN202
    from datetime import date

    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ParameterError(f"{option} must be a date like 2026-11-20, got {text!r}") from None


@app.command(cls=_Command)
def synth(
    out_dir: Annotated[Optional[str], typer.Argument(metavar="OUT_DIR", help="Where to write it (default: <root>/datasets/synthetic).")] = None,
    train: Annotated[int, typer.Option(help="Normal training videos.")] = 6,
    test: Annotated[int, typer.Option(help="Test videos, each with one anomalous event.")] = 6,
    frames: Annotated[int, typer.Option(help="Frames per video.")] = 150,
    size: Annotated[str, typer.Option(help="Frame size HEIGHTxWIDTH.")] = "120x160",
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same videos.")] = 0,
    root: RootOpt = None,
) -> None:
    """Write the deterministic synthetic dataset (H.264 videos + labels.csv)."""
    from vad.tasks.sources.ingest import parse_size
    from vad.tasks.sources.synthetic import SyntheticSpec, make_synthetic

    height, width = parse_size(size)
    out = out_dir or f"{_root(root)}/datasets/synthetic"
    spec = SyntheticSpec(n_train=train, n_test=test, frames=frames, height=height, width=width, seed=seed)
    videos = make_synthetic(out, spec)
    typer.echo(f"synthetic dataset: {len(videos)} videos ({train} train, {test} test) of {frames} frames at {size} in {out}")


def _check_run_data(base: str, datasets: list[str], sources: list[str]) -> dict[str, list | None]:
    """`vad run`'s data, checked first (it needs no torch, so the commonest mistakes are refused in
    about a second): each source's layout, else each store. The videos each source lists (None: a store)."""
    from vad.storage import ClipStore
    from vad.tasks.sources.datasets import survey
    from vad.tasks.workspace import store_url

    if sources and len(sources) != len(datasets):
        raise ParameterError(f"give one --source per --dataset ({len(sources)} sources, {len(datasets)} datasets)")
    listed: dict[str, list | None] = {}
    for i, name in enumerate(datasets):
        if sources:
            listed[name] = survey(sources[i]).videos
        else:
            ClipStore.open(store_url(base, name))  # none: one line naming it, and `vad ingest`
            listed[name] = None
    return listed


def _check_run(base: str, listed: dict[str, list | None], sources: list[str], *, report: str, frame_mode: str,
               device: str, batch: int | None, precision: str, compile: bool,
               training: dict[str, tuple[str | None, int]], size: str | None, gray: bool | None,
               max_minutes: float | None):  # noqa: ANN202
    """The rest of what `vad run` can check before Prefect starts: the scoring and training settings,
    the checkpoints each dataset would use (one per role, or the default architecture's among
    several), that a found pair reads the store, and training footage where a model is to be
    trained. The checked `Compute`."""
    from vad.storage import ClipStore, check_run_id
    from vad.tasks.runtime.compute import Compute, pick_device
    from vad.tasks.inference.scoring import check_frame_mode
    from vad.tasks.runtime.checkpoint import cached_checkpoint, check_pair, find_checkpoint
    from vad.tasks.learning.training import TrainConfig
    from vad.tasks.sources.ingest import parse_size, require_training_footage
    from vad.tasks.workspace import store_url

    from vad.errors import NotFoundError

    check_run_id(f"{report}-all")
    check_frame_mode(frame_mode)
    compute = Compute(device=device, batch=batch, precision=precision, compile=compile)  # type: ignore[arg-type]
    pick_device(device)
    channels = None if gray is None else (1 if gray else 3)
    for role, (arch, epochs) in training.items():
        TrainConfig(role=role, arch=arch, epochs=epochs, size=parse_size(size) if size else None, channels=channels,  # type: ignore[arg-type]
                    max_minutes=max_minutes)
    for i, (name, videos) in enumerate(listed.items()):
        url, found = store_url(base, name), {}
        for role in ("small", "large"):
            with contextlib.suppress(NotFoundError):
                found[role] = find_checkpoint(base, name, role)  # several without the default: one line here
        if len(found) < 2:
            require_training_footage(videos or [], sources[i] if sources else url, store_url=url)
        elif videos is None:  # the store as it is: the pair must read it
            small, large = cached_checkpoint(found["small"]), cached_checkpoint(found["large"])
            check_pair(small, large)
            store = ClipStore.open(url)
            for ck in (small, large):
                ck.check_store(store)
    return compute


def _print_pipeline(summary) -> None:  # noqa: ANN001
    import pandas as pd

    cols = ["dataset", "run", "scores", "micro_auc", "micro_eer", "micro_ap", "macro_auc"]
    typer.echo(f"report: {summary.report}/report.html (and report.md)")
    alarms = pd.read_parquet(Path(summary.report) / "alarms.parquet")
    for row in alarms.itertuples():
        typer.echo(f"{row.dataset} {row.run}: {row.events} events in {row.footage_h:.2f} h of footage "
                   f"({row.events_per_hour:.1f} alarms per hour at the threshold {row.threshold:.2f}); "
                   f"{row.labelled_videos} of {row.videos} videos labelled")
    measured = summary.headline[summary.headline.micro_auc.notna()] if len(summary.headline) else summary.headline
    if len(measured):
        typer.echo(f"protocol: {measured.protocol.iloc[0]}")
        typer.echo(measured[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    else:
        typer.echo("no labelled test footage: no AUC, EER or AP (the report shows timelines and events)")
    for where, why in summary.failures.items():
        typer.echo(f"FAILED {where}: {why}", err=True)


@app.command(cls=_Command)
def run(
    dataset: Annotated[list[str], typer.Option(metavar="NAME", help="Dataset name (repeat for several).")],
    source: Annotated[Optional[list[str]], typer.Option(metavar="FOLDER", help="Dataset folder to ingest, one per --dataset (omit to use the stores as they are).")] = None,
    budget: Annotated[float, typer.Option(help="Escalation budget of the routed run (fraction of clips).")] = 0.2,
    small_arch: Annotated[Optional[str], typer.Option("--small-arch", help="Small architecture when training (default motion_patch).")] = None,
    large_arch: Annotated[Optional[str], typer.Option("--large-arch", help="Large architecture when training (default objects).")] = None,
    size: Annotated[Optional[str], typer.Option(help="Model input HEIGHTxWIDTH when training.")] = None,
    gray: Annotated[Optional[bool], typer.Option("--gray/--rgb", help="Store and train in gray (or RGB); default: RGB ingest, the store's channels for training.")] = None,
    small_epochs: Annotated[int, typer.Option("--small-epochs", help="Most epochs of the small model's training; early stopping may end sooner.")] = 20,
    large_epochs: Annotated[int, typer.Option("--large-epochs", help="Most epochs of the large model's training; early stopping may end sooner.")] = 20,
    max_minutes: Annotated[Optional[float], typer.Option("--max-minutes", help="Time budget of each training.")] = None,
    report: Annotated[str, typer.Option(help="Report name: <root>/reports/<name>/; also prefixes the run ids.")] = "latest",
    smooth: Annotated[float, typer.Option(help="NON-STANDARD: temporal Gaussian smoothing of scores (sigma in frames); labelled in the report.")] = 0.0,
    minmax: Annotated[bool, typer.Option("--minmax", help="NON-STANDARD: per-video min-max normalisation; labelled in the report.")] = False,
    min_event_s: MinEventOpt = 0.5,
    merge_gap_s: MergeGapOpt = 1.0,
    frame_mode: FrameModeOpt = "clip",
    fusion: FusionOpt = None,
    device: DeviceOpt = "auto",
    batch: BatchOpt = None,
    precision: PrecisionOpt = "auto",
    compile: CompileOpt = False,
    root: RootOpt = None,
) -> None:
    """Ingest (with --source), train (unless checkpoints exist), score and report, for each dataset."""
    from vad.tasks.workspace import check_dataset_name

    from vad.tasks.inference.routing import check_fusion  # imports torch, but a bad rule should not wait for the data

    base = _root(root)
    if fusion is not None:
        check_fusion(fusion)
    for name in dataset:
        check_dataset_name(name)
    listed = _check_run_data(base, list(dataset), list(source or []))
    from vad.tasks.inference.routing import BatchBudget  # imports torch: after the data

    BatchBudget(budget)
    from vad.tasks.evaluation.metrics import Protocol

    Protocol(smooth_sigma=smooth)
    from vad.tasks.inference.events import EventSettings

    EventSettings(min_event_s, merge_gap_s)
    compute = _check_run(base, listed, list(source or []), report=report, frame_mode=frame_mode, device=device,
                         batch=batch, precision=precision, compile=compile,
                         training={"small": (small_arch, small_epochs), "large": (large_arch, large_epochs)},
                         size=size, gray=gray, max_minutes=max_minutes)
    _prefect_defaults(base)
    from vad.flows.pipeline import pipeline_flow

    with _interruptible("interrupted; run the same command again: finished stages are reused"):
        summary = pipeline_flow(
            datasets=list(dataset), sources=list(source) if source else None, root=base, budget=budget,
            small_arch=small_arch, large_arch=large_arch, size=size, gray=gray, small_epochs=small_epochs,
            large_epochs=large_epochs, max_minutes=max_minutes, report_name=report, smooth_sigma=smooth, minmax=minmax,
            min_event_s=min_event_s, merge_gap_s=merge_gap_s, frame_mode=frame_mode, compute=compute, progress=True,  # type: ignore[arg-type]
            fusion=fusion,
        )
    _print_pipeline(summary)


@app.command(cls=_Command)
def validate(
    dataset: Annotated[str, typer.Option(help="Dataset whose checkpoints' validation choices are shown.")],
    root: RootOpt = None,
) -> None:
    """Print what training chose on the camera's own normal footage: each model's variant table and the fusion table."""
    from vad.tasks.evaluation.choices import selection_text

    from vad.errors import NotFoundError

    try:
        typer.echo(selection_text(_root(root), dataset))
    except NotFoundError as exc:  # nothing to show is a plain "no" (exit 1), not a usage error (2)
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command(cls=_Command)
def demo(root: RootOpt = None) -> None:
    """Run the pipeline end to end on a small synthetic dataset made on the fly."""
    from vad.tasks.sources.synthetic import SyntheticSpec, make_synthetic

    base = _root(root)
    data = Path(base) / "datasets" / "synthetic"
    if not (data / "synthetic.json").exists():
        make_synthetic(data, SyntheticSpec())
        typer.echo(f"made the synthetic dataset in {data}")
    _prefect_defaults(base)
    from vad.flows.pipeline import pipeline_flow

    typer.echo("ingest, fit the small (motion_patch) and large (objects) models, score, route 20% of clips, find events, report")
    with _interruptible("interrupted; run `vad demo` again: finished stages are reused"):
        summary = pipeline_flow(
            datasets=["synthetic"], sources=[str(data)], root=base, budget=0.2, report_name="demo",
            progress=True,
        )
    _print_pipeline(summary)


def _usage_error_types() -> tuple[type, ...]:
    """The base classes of command-line usage errors in whichever click and typer are installed.

    Up to typer 0.2x they are click's `ClickException`s; typer 0.29 carries its own copy of click,
    whose errors derive from `typer.exceptions.TyperException` and not from click's.
    """
    found = []
    for module, name in (("click.exceptions", "ClickException"), ("typer._click.exceptions", "ClickException"),
                         ("typer.exceptions", "TyperException")):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(importlib.import_module(module), name))
    return tuple(found)


def _usage_line(exc: Exception, args: list[str]) -> str:
    """One line for a usage error: click's message and where the options are listed."""
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None)
    if not path:  # the parser's own errors (an option missing its value) carry no context
        names = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
        path = f"vad {args[0]}" if args and args[0] in names else "vad"
    message = " ".join(line.strip() for line in exc.format_message().splitlines() if line.strip())  # type: ignore[attr-defined]
    return f"error: {message.rstrip('.')} (see '{path} --help')"


def main(argv: list[str] | None = None) -> None:
    """Console entry point: a user's mistake (a usage error, an expected pipeline error) prints one
    line and exits 2, never a traceback; Ctrl-C prints one line and exits 130."""
    global _owns_process
    _owns_process = argv is None
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        if not args:  # the commands and what they do; exit 2 as click's newer releases do
            app(["--help"], prog_name="vad", standalone_mode=False)
            sys.exit(2)
        code = app(args, prog_name="vad", standalone_mode=False)  # returns a typer.Exit's code instead of raising it
        sys.exit(code if isinstance(code, int) else 0)
    except PipelineError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Interrupted as exc:
        _say_interrupted(str(exc))
        sys.exit(130)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except _usage_error_types() as exc:
        typer.echo(_usage_line(exc, args), err=True)
        sys.exit(getattr(exc, "exit_code", 2))


if __name__ == "__main__":
    main()
