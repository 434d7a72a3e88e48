"""The `vad` command line: thin wrappers that run the flows and print a summary."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tasks.errors import PipelineError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Video anomaly detection with cost-aware model routing.")

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
    from tasks.workspace import default_root

    return root or default_root()


def _run_ingest(source: str, dataset: str, root: str, **options: object) -> int:
    """Run the ingest flow, print its summary; 0 when every video went in, 1 when some failed."""
    from tasks.datasets._base import require_dir
    from tasks.ingest import parse_size
    from tasks.workspace import check_dataset_name

    # Fail in a second, before starting Prefect's server, on what can be checked cheaply.
    check_dataset_name(dataset)
    require_dir(Path(source).expanduser(), "dataset folder")
    if options.get("size"):
        parse_size(str(options["size"]))
    _prefect_defaults(root)
    from flows.ingest import ingest_flow

    state = ingest_flow(source=source, dataset=dataset, root=root, return_state=True, **options)  # type: ignore[arg-type]
    summary = state.result(raise_on_failure=False)
    if isinstance(summary, BaseException):
        raise summary
    n = len(summary.results) + len(summary.failures)
    typer.echo(
        f"ingest {dataset}: {n} videos; ingested {len(summary.results) - summary.skipped}, "
        f"skipped {summary.skipped} (unchanged), failed {len(summary.failures)}; "
        f"{summary.frames:,} frames in {summary.seconds:.1f} s ({summary.frames / max(summary.seconds, 1e-9):,.0f} frames/s)"
    )
    typer.echo(f"store: {summary.store}")
    for video, reason in summary.failures.items():
        typer.echo(f"FAILED {video}: {reason}", err=True)
    return 1 if summary.failures else 0


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help="Dataset folder (or a folder of videos / frame folders).")],
    dataset: Annotated[str, typer.Option(help="Dataset name; the store is <root>/stores/<name>.zarr.")],
    format: Annotated[str, typer.Option("--format", help="auto|ucsd|avenue|shanghaitech|ucf-crime|folder")] = "auto",
    size: Annotated[Optional[str], typer.Option(help="Stored frame size HEIGHTxWIDTH (default: the source's, scaled down to 480 rows if taller).")] = None,
    gray: Annotated[bool, typer.Option("--gray/--rgb", help="Store one gray channel or three RGB channels.")] = False,
    fps: Annotated[Optional[float], typer.Option(help="Resample to this frame rate (unlabelled footage only).")] = None,
    force: Annotated[bool, typer.Option(help="Re-ingest videos even when unchanged.")] = False,
    root: RootOpt = None,
) -> None:
    """Decode a dataset's videos into its Zarr clip store (unchanged videos are skipped)."""
    raise typer.Exit(_run_ingest(source, dataset, _root(root), format=format, size=size, gray=gray, fps=fps, force=force))


@app.command()
def synth(
    out_dir: Annotated[Optional[str], typer.Argument(help="Where to write it (default: <root>/datasets/synthetic).")] = None,
    train: Annotated[int, typer.Option(help="Normal training videos.")] = 6,
    test: Annotated[int, typer.Option(help="Test videos, each with one anomalous event.")] = 6,
    frames: Annotated[int, typer.Option(help="Frames per video.")] = 150,
    size: Annotated[str, typer.Option(help="Frame size HEIGHTxWIDTH.")] = "120x160",
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same videos.")] = 0,
    root: RootOpt = None,
) -> None:
    """Write the deterministic synthetic dataset (H.264 videos + labels.csv)."""
    from tasks.ingest import parse_size
    from tasks.synthetic import SyntheticSpec, make_synthetic

    height, width = parse_size(size)
    out = out_dir or f"{_root(root)}/datasets/synthetic"
    spec = SyntheticSpec(n_train=train, n_test=test, frames=frames, height=height, width=width, seed=seed)
    videos = make_synthetic(out, spec)
    typer.echo(f"synthetic dataset: {len(videos)} videos ({train} train, {test} test) of {frames} frames at {size} in {out}")


@app.command()
def demo(root: RootOpt = None) -> None:
    """Run the pipeline end to end on a small synthetic dataset made on the fly."""
    from tasks.synthetic import SyntheticSpec, make_synthetic

    base = _root(root)
    data = Path(base) / "datasets" / "synthetic"
    if not (data / "synthetic.json").exists():
        make_synthetic(data, SyntheticSpec())
        typer.echo(f"made the synthetic dataset in {data}")
    raise typer.Exit(_run_ingest(str(data), "synthetic", base, format="folder"))


def main() -> None:
    """Console entry point: expected errors print one line and exit 2, never a traceback."""
    try:
        code = app(standalone_mode=False)  # returns the code of a typer.Exit instead of raising it
        sys.exit(code if isinstance(code, int) else 0)
    except PipelineError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as exc:  # click's usage errors come through here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
