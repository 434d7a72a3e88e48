"""prefect.yaml stays in step with the flows: every entrypoint imports and every parameter exists."""

import importlib
import inspect
from pathlib import Path

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
