"""Every pipeline error survives a trip between processes (pickle, as Dask sends a failed task's
exception back), and a bad video on a Dask worker is one failure, not a crashed run."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
import shutil
import typing
from pathlib import Path

import pytest

from vad.errors import PipelineError

PACKAGES = ("tasks", "storage", "models", "flows")


def _import_project() -> None:
    """Import every project module, so that error classes defined outside vad/errors.py count too."""
    for name in PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            importlib.import_module(info.name)


def _subclasses(cls: type) -> list[type]:
    found, todo = {cls}, [cls]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")


_import_project()
ERRORS = _subclasses(PipelineError)

_SAMPLES = {str: "sample/value.mp4", int: 7, float: 2.5, bool: True}


def _sample(annotation: object) -> object:
    """A value of the annotated type that differs from any default (so a lost attribute shows)."""
    for kind in typing.get_args(annotation) or (annotation,):
        if kind in _SAMPLES:
            return _SAMPLES[kind]
        if typing.get_origin(kind) is list:
            return ["ffmpeg", "-i", "sample/value.mp4"]
    raise AssertionError(f"no sample value for {annotation!r}: extend _SAMPLES")


def _example(cls: type) -> PipelineError:
    """An instance of `cls` built through its own constructor, every argument given."""
    init = cls.__init__
    if not any(init is vars(k).get("__init__") for k in cls.__mro__ if issubclass(k, PipelineError)):
        return cls("a message naming sample/value.mp4")  # the constructor of Exception (or OSError)
    hints = typing.get_type_hints(init)
    args, kwargs = [], {}
    for p in list(inspect.signature(init).parameters.values())[1:]:
        value = _sample(hints[p.name]) if p.name != "stderr" else "line one\nInvalid data found when processing input"
        if p.kind is p.KEYWORD_ONLY:
            kwargs[p.name] = value
        else:
            args.append(value)
    return cls(*args, **kwargs)


def test_the_hierarchy_walk_finds_the_errors_that_take_arguments():
    names = {c.__name__ for c in ERRORS}
    assert {"FFmpegError", "LabelMismatchError", "CheckpointMismatchError", "NotFoundError"} <= names


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_every_pipeline_error_round_trips_through_pickle_with_its_attributes(cls):
    exc = _example(cls)
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is cls
    assert str(copy) == str(exc) and copy.args == exc.args
    assert vars(copy) == vars(exc)  # FFmpegError's path, cmd, stderr, transient ...
    for base in cls.__mro__[1:]:
        if base is not object and not issubclass(base, PipelineError):
            assert isinstance(copy, base)  # NotFoundError is still a FileNotFoundError


def test_ffmpeg_error_keeps_command_stderr_and_transient_flag():
    from vad.errors import FFmpegError

    exc = FFmpegError("/cam/a.mp4", "not a readable video", cmd=["ffmpeg", "-i", "/cam/a.mp4"],
                      stderr="moov atom not found", transient=True)
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.path, copy.cmd, copy.stderr, copy.transient) == ("/cam/a.mp4", ["ffmpeg", "-i", "/cam/a.mp4"], "moov atom not found", True)
    assert "moov atom not found" in str(copy)


@pytest.mark.integration
def test_a_bad_video_on_a_dask_worker_is_one_failure_among_completed_videos(tiny_dataset, tmp_path, prefect_server):
    from vad.flows.ingest import ingest_flow
    from vad.tasks.operations.runners import RunnerSpec
    from vad.storage import ClipStore

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (data / "test" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    state = ingest_flow(source=str(data), dataset="tiny", root=str(tmp_path / "ws"), runner=RunnerSpec("dask", workers=2),
                        return_state=True)
    summary = state.result(raise_on_failure=False)
    assert not isinstance(summary, BaseException), summary
    assert state.is_failed()
    assert list(summary.failures) == ["broken"]
    assert "broken.mp4" in summary.failures["broken"] and "not a readable video" in summary.failures["broken"]
    assert sorted(r.video_id for r in summary.results) == ["normal_00", "normal_01", "test_00", "test_01"]
    assert ClipStore.open(summary.store).video_ids() == ["normal_00", "normal_01", "test_00", "test_01"]
    assert Path(summary.store).is_dir()
