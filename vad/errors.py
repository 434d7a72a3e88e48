"""The project's error hierarchy.

Every error the pipeline raises on purpose derives from `PipelineError`, so a batch can tell an
expected per-video failure (bad input) from a bug. Callers branch on the class, never on message text.
Every one pickles with its attributes, so a failure on a Dask worker comes back to the flow as itself.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error raised on purpose by the pipeline."""

    def __reduce__(self):  # noqa: ANN204
        # Exception's own __reduce__ gives (cls, self.args, state), and unpickling calls cls(*args):
        # that fails for a class whose __init__ takes other arguments than its message (FFmpegError,
        # LabelMismatchError, ...). Rebuild without calling __init__: the args (OSError's include the
        # file name) and the instance attributes are restored as they were.
        reduced = super().__reduce__()
        return _rebuild, (type(self), reduced[1], reduced[2] if len(reduced) > 2 else None)


def _rebuild(cls: type[PipelineError], args: tuple, state: dict | None) -> PipelineError:
    exc = cls.__new__(cls, *args)
    exc.args = args
    if state:
        exc.__dict__.update(state)
    return exc


class ParameterError(PipelineError, ValueError):
    """A parameter is out of range or malformed (validated at a public boundary)."""


class NotFoundError(PipelineError, FileNotFoundError):
    """A file, folder, store or video that should exist does not."""


class StoreNotFoundError(NotFoundError):
    """A clip store (or a video group inside it) does not exist."""


class IncompleteVideoError(PipelineError):
    """A video group exists but its ingest never finished; re-run the ingest."""


class DatasetLayoutError(PipelineError):
    """A dataset folder does not match the layout its adapter expects."""


class LabelMismatchError(PipelineError):
    """A video's frame labels do not match its frames."""

    def __init__(self, video: str, labels: int, frames: int, source: str = "") -> None:
        self.video, self.labels, self.frames, self.source = video, labels, frames, source
        where = f" ({source})" if source else ""
        super().__init__(
            f"video {video!r}{where}: the labels cover {labels} frames but the video has {frames}"
        )


class CheckpointError(PipelineError):
    """A checkpoint file is missing pieces, from another program, or unreadable."""


class CheckpointMismatchError(PipelineError):
    """A checkpoint's preprocessing does not match the store (or video) it is applied to."""

    def __init__(self, checkpoint: str, video: str, problem: str) -> None:
        self.checkpoint, self.video, self.problem = checkpoint, video, problem
        super().__init__(f"checkpoint {checkpoint} does not fit video {video!r}: {problem}")


class NonFiniteScoreError(PipelineError):
    """A model's pass over a video gave NaN or infinite scores (broken weights or frames)."""


class FFmpegError(PipelineError):
    """FFmpeg failed on an input; carries the command and FFmpeg's own message.

    `transient` marks failures worth retrying (FFmpeg killed by a signal, an I/O error reading the
    source); a corrupt or empty file is not transient.
    """

    def __init__(
        self, path: str, message: str, *, cmd: list[str] | None = None, stderr: str = "",
        transient: bool = False,
    ) -> None:
        self.path, self.cmd, self.stderr, self.transient = path, cmd or [], stderr, transient
        detail = _last_lines(stderr)
        super().__init__(f"{path}: {message}" + (f"\nFFmpeg said: {detail}" if detail else ""))


def _last_lines(text: str, n: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:])


class LockHeldError(PipelineError):
    """Another live process holds a lock this one needs (after waiting as long as allowed)."""
