"""prefect.yaml stays in step with the flows: every entrypoint imports and every parameter exists."""

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_every_deployment_points_at_a_flow_that_takes_its_parameters():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = [d["name"] for d in spec["deployments"]]
    assert {"ingest", "train", "score", "pipeline"} <= set(names)
    for deployment in spec["deployments"]:
        path, func = deployment["entrypoint"].split(":")
        flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(deployment.get("parameters", {})) <= accepted, deployment["name"]


def _strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def test_nightly_is_scheduled_and_the_file_names_no_machine_path_or_credential():
    text = (ROOT / "prefect.yaml").read_text()
    spec = yaml.safe_load(text)
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert by_name["nightly"]["entrypoint"] == by_name["backfill"]["entrypoint"] == "flows/backfill.py:backfill_flow"
    assert [s["cron"] for s in by_name["nightly"]["schedules"]] == ["0 2 * * *"]
    assert "schedules" not in by_name["backfill"]
    values = [v for v in _strings(spec) if v != "{{ $PWD }}"]
    assert not [v for v in values if v.startswith(("/", "~")) or "://" in v]
    assert not [k for k in ("password", "secret", "token", "aws_", "key:") if k in text.lower()]


def test_the_deployments_that_write_archive_runs_share_one_concurrency_limit():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    writers = [d for d in spec["deployments"] if d["entrypoint"] == "flows/backfill.py:backfill_flow"]
    assert {d["name"] for d in writers} == {"nightly", "backfill"}
    # one work queue, limited to one run at a time (`prefect work-queue create archive --limit 1`)
    assert {(d["work_pool"]["name"], d["work_pool"]["work_queue_name"]) for d in writers} == {("vad-process", "archive")}
    text = (ROOT / "prefect.yaml").read_text()
    assert "prefect work-queue create archive --pool vad-process --limit 1" in text
    for d in writers:
        assert d["parameters"]["lock_timeout_s"] > 0 and d["parameters"]["keep_frames"] is False


def test_task_runner_settings():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner
    from vad.tasks.operations.runners import task_runner

    from vad.errors import ParameterError

    threads = task_runner("threads", workers=3)
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3
    remote = task_runner("threads", dask_address="tcp://10.0.0.5:8786")  # an address means Dask
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.5:8786"
    for bad in ({"runner": "ray"}, {"runner": "dask", "workers": 0}, {"runner": "threads", "dask_address": "10.0.0.5:8786"}):
        with pytest.raises(ParameterError):
            task_runner(**bad)


class _Wrapped:
    def __init__(self, done, client=None):
        self._done, self.client = done, client

    def done(self):
        return self._done


class _Future:
    def __init__(self, name, done, client=None):
        self.name, self.wrapped_future = name, _Wrapped(done, client)


def test_waiting_on_a_dask_cluster_without_workers_is_an_error_not_a_hang():
    from types import SimpleNamespace

    from vad.tasks.operations.runners import completed

    from vad.errors import PipelineError

    ready = [_Future("a", True), _Future("b", True)]
    assert [f.name for f in completed(ready)] == ["a", "b"]
    client = SimpleNamespace(scheduler_info=lambda: {"workers": {}}, scheduler=SimpleNamespace(address="tcp://h:8786"))
    stuck = [_Future("a", True), _Future("c", False, client)]
    got = []
    with pytest.raises(PipelineError, match="no worker"):
        for f in completed(stuck, poll=0.01, no_workers_for=0.05):
            got.append(f.name)
    assert got == ["a"]
