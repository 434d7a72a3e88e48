"""Task runners the flows can run their tasks on: threads in the flow's process (the default), a
local Dask cluster of worker processes, or an existing Dask scheduler by address.

Dask worker processes report task states to the Prefect API. With no `PREFECT_API_URL` each would
start a temporary API server of its own, and those servers fight over one SQLite file; so a local
cluster is handed the URL of the API the flow itself talks to (the flow's temporary server in the
embedded default). Workers of an existing cluster must have `PREFECT_API_URL` set by whoever
started them (see docs/operations.md).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from vad.tasks.runtime.cores import available_cores, machine_cores

from vad.errors import ParameterError, PipelineError

if TYPE_CHECKING:
    from prefect.task_runners import TaskRunner

Runner = Literal["threads", "dask"]
RUNNERS = ("threads", "dask")


@dataclass(frozen=True)
class RunnerSpec:
    """Where a flow's tasks run, the part of every flow's parameters that says how, not what: `kind`
    "threads" (in the flow's process) or "dask" (a local cluster); `dask_address` (tcp://host:8786)
    means Dask on that scheduler. `workers`: threads for "threads" (default: the cores), worker
    processes for a local Dask cluster (default 2). Checked when built."""

    kind: Runner = "threads"
    dask_address: Annotated[str, Field(pattern=r"^(tcp|tls|ucx|inproc)://")] | None = None
    workers: Annotated[int, Field(ge=1, le=256)] | None = None

    def __post_init__(self) -> None:
        if self.kind not in RUNNERS:
            raise ParameterError(f"task runner must be one of {', '.join(RUNNERS)}, got {self.kind!r}")
        if self.workers is not None and not 1 <= self.workers <= 256:
            raise ParameterError(f"workers must be between 1 and 256, got {self.workers}")
        if self.dask_address and not self.dask_address.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
            raise ParameterError(f"Dask scheduler address must look like tcp://HOST:PORT, got {self.dask_address!r}")


def task_runner(spec: RunnerSpec = RunnerSpec()) -> TaskRunner:
    """The Prefect task runner `spec` describes. A local cluster's workers share the cores for
    their torch threads."""
    from prefect.task_runners import ThreadPoolTaskRunner  # Prefect reads its settings at import (the CLI sets them first)

    if spec.dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=spec.dask_address)
    if spec.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=spec.workers or machine_cores())
    from prefect_dask import DaskTaskRunner

    logging.getLogger("distributed").setLevel(logging.WARNING)  # the scheduler runs in this process
    n = spec.workers or 2
    env = {"VAD_TORCH_THREADS": str(max(1, available_cores() // n)), "PREFECT_API_URL": current_api_url()}
    for name in ("VAD_ROOT", "DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_LOGGING_LEVEL"):
        if name in os.environ:
            env[name] = os.environ[name]
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": n, "threads_per_worker": 1, "processes": True, "dashboard_address": None,
        "silence_logs": logging.WARNING, "env": env,
    })


def current_api_url() -> str:
    """The Prefect API this process talks to: `PREFECT_API_URL`, else its temporary server's."""
    from prefect.client.orchestration import get_client

    return str(get_client(sync_client=True).api_url)


def completed(futures: list, *, poll: float = 0.2, no_workers_for: float = 120.0) -> Iterator:
    """Yield Prefect futures as they finish, on any task runner.

    Polls the futures' own completion (threads or Dask) rather than relying on callbacks. On Dask,
    a cluster that has had no worker for `no_workers_for` seconds (workers lost, or a scheduler
    nobody joined) is an error instead of a wait that never ends.
    """
    pending = list(futures)
    empty_since: float | None = None
    while pending:
        done = [f for f in pending if f.wrapped_future.done()]
        for f in done:
            pending.remove(f)
            yield f
        if done or not pending:
            continue
        client = getattr(pending[0].wrapped_future, "client", None)
        if client is not None:
            if client.scheduler_info().get("workers"):
                empty_since = None
            elif empty_since is None:
                empty_since = time.monotonic()
            elif time.monotonic() - empty_since > no_workers_for:
                raise PipelineError(
                    f"the Dask cluster at {client.scheduler.address} has had no worker for {no_workers_for:.0f} s "
                    f"with {len(pending)} tasks waiting; start workers or check their logs"
                )
        time.sleep(poll)
