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


_REQUIRED = {"archive": "/a", "dataset": "cam", "source": "/s", "datasets": ["cam"]}


@pytest.mark.parametrize("name", ["nightly", "backfill", "score", "train", "ingest"])
def test_nested_deployment_parameters_build_the_flows_parameter_objects(name):
    from vad.tasks.inference.routing import BatchBudget
    from vad.tasks.inference.scoring import ScoreSettings
    from vad.tasks.learning.training import TrainConfig
    from vad.tasks.operations.archive import BackfillSettings
    from vad.tasks.operations.runners import RunnerSpec
    from vad.tasks.sources.ingest import Preprocess

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployment = next(d for d in spec["deployments"] if d["name"] == name)
    path, func = deployment["entrypoint"].split(":")
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)
    accepted = set(inspect.signature(flow.fn).parameters)
    given = {k: v for k, v in _REQUIRED.items() if k in accepted} | deployment["parameters"]
    built = flow.validate_parameters(given)  # Prefect's own check of a run's parameters; an unknown field fails
    expected = {"settings": BackfillSettings if name in ("nightly", "backfill") else ScoreSettings, "config": TrainConfig,
                "prep": Preprocess, "runner": RunnerSpec}
    for key, cls in expected.items():
        if key in deployment["parameters"]:
            assert isinstance(built[key], cls), (name, key)
    scoring = built["settings"].scoring if name in ("nightly", "backfill") else built.get("settings")
    if scoring is not None:
        assert scoring.budget == BatchBudget(0.2) and scoring.router is None  # the large checkpoint's choice


@pytest.mark.parametrize("name", ["nightly", "backfill", "score", "train", "ingest", "pipeline"])
def test_deployment_parameters_pass_the_schema_the_server_checks(name):
    """`prefect deploy` sends the flow's parameter schema with the deployment's parameters, and the
    server refuses the deployment unless they validate against it (JSON schema, not pydantic)."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import validate

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployment = next(d for d in spec["deployments"] if d["name"] == name)
    path, func = deployment["entrypoint"].split(":")
    flow = getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), func)
    schema = parameter_schema(flow).model_dump_for_openapi()
    assert validate(deployment.get("parameters", {}), schema, raise_on_error=False, ignore_required=True) == []
    for budget in ({"fraction": 0.1}, {"capacity": 3, "refill": 0.2}):  # both kinds, as `-p` would give them
        if name == "score":
            assert validate({"dataset": "cam", "settings": {"budget": budget}}, schema, raise_on_error=False) == []
    # out of range: refused by the server when the run is created, not by a worker hours later
    scoring = {"nightly": "settings.scoring", "backfill": "settings.scoring", "score": "settings"}.get(name)
    bad = [{"runner": {"workers": 0}}, {"runner": {"dask_address": "10.0.0.5:8786"}}] if "runner" in schema["properties"] else []
    if scoring:
        for inner in ({"budget": {"fraction": 1.5}}, {"budget": {"capacity": -1, "refill": 0}}, {"router": {"margin": 2}},
                      {"router": {"signals": ["bogus"]}}, {"compute": {"device": "tpu"}}, {"compute": {"batch": 0}}):
            bad.append({"settings": {"scoring": inner}} if scoring == "settings.scoring" else {"settings": inner})
    if name in ("nightly", "backfill"):
        bad += [{"settings": {"batch_size": 0}}, {"settings": {"lock_timeout_s": -1}}, {"lookback_days": -1}]
    required = {k: v for k, v in _REQUIRED.items() if k in schema.get("required", [])}
    for params in bad:  # a run's parameters, checked as the server checks them when the run is created
        assert validate({**required, **params}, schema, raise_on_error=False), (name, params)


def test_a_deployment_parameter_out_of_range_fails_the_run_before_any_work():
    from prefect.exceptions import ParameterTypeError
    from vad.flows.score import score_flow
    from vad.tasks.inference.routing import TokenBucket

    for bad in ({"budget": {"fraction": 1.5}}, {"router": {"margin": 2}}, {"frame_mode": "pixel"},
                {"compute": {"precision": "fp8"}}, {"router": {"marginn": 0.1}}):
        with pytest.raises(ParameterTypeError):
            score_flow.validate_parameters({"dataset": "cam", "settings": bad})
    # a budget's fields say which kind it is, and the refusal is about that kind alone
    with pytest.raises(ParameterTypeError) as err:
        score_flow.validate_parameters({"dataset": "cam", "settings": {"budget": {"fraction": 1.5}}})
    assert "budget must be a fraction in [0, 1], got 1.5" in str(err.value) and "capacity" not in str(err.value)
    bucket = score_flow.validate_parameters({"dataset": "cam", "settings": {"budget": {"capacity": 3, "refill": 0.5}}})
    assert bucket["settings"].budget == TokenBucket(3, 0.5) and isinstance(bucket["settings"].budget.capacity, float)
    for bad in ({"capacity": 3}, {"fraction": "a lot"}, {"fraction": 0.1, "refil": 1}):
        with pytest.raises(ParameterTypeError, match="a budget is"):
            score_flow.validate_parameters({"dataset": "cam", "settings": {"budget": bad}})


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
        assert d["parameters"]["settings"]["lock_timeout_s"] > 0 and d["parameters"]["settings"]["keep_frames"] is False


def test_task_runner_settings():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner
    from vad.tasks.operations.runners import RunnerSpec, task_runner

    from vad.errors import ParameterError

    threads = task_runner(RunnerSpec("threads", workers=3))
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3
    remote = task_runner(RunnerSpec("threads", dask_address="tcp://10.0.0.5:8786"))  # an address means Dask
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.5:8786"
    for bad in ({"kind": "ray"}, {"kind": "dask", "workers": 0}, {"kind": "threads", "dask_address": "10.0.0.5:8786"}):
        with pytest.raises(ParameterError):
            RunnerSpec(**bad)


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
