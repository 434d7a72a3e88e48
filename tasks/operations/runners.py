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
from typing import Literal

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from vad.tasks.inference.compute import available_cores

from vad.errors import ParameterError, PipelineError

Runner = Literal["threads", "dask"]
RUNNERS = ("threads", "dask")


def task_runner(runner: str = "threads", *, dask_address: str | None = None, workers: int | None = None) -> TaskRunner:
    """The task runner for `runner`; `dask_address` (tcp://host:8786) implies Dask on that scheduler.

    `workers`: threads for "threads" (default: the cores), worker processes for a local Dask
    cluster (default 2). A local cluster's workers share the cores for their torch threads.
    """
    check_runner(runner, dask_address=dask_address, workers=workers)
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    if runner == "threads":
        return ThreadPoolTaskRunner(max_workers=workers or available_cores())
    from prefect_dask import DaskTaskRunner

    logging.getLogger("distributed").setLevel(logging.WARNING)  # the scheduler runs in this process
    n = workers or 2
    env = {"VAD_TORCH_THREADS": str(max(1, available_cores() // n)), "PREFECT_API_URL": current_api_url()}
    for name in ("VAD_ROOT", "DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_LOGGING_LEVEL"):
        if name in os.environ:
            env[name] = os.environ[name]
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": n, "threads_per_worker": 1, "processes": True, "dashboard_address": None,
        "silence_logs": logging.WARNING, "env": env,
    })


def check_runner(runner: str, *, dask_address: str | None = None, workers: int | None = None) -> None:
    """Refuse an unknown runner, a malformed scheduler address or a worker count out of range."""
    if runner not in RUNNERS:
        raise ParameterError(f"task runner must be one of {', '.join(RUNNERS)}, got {runner!r}")
    if workers is not None and not 1 <= workers <= 256:
        raise ParameterError(f"workers must be between 1 and 256, got {workers}")
    if dask_address and not dask_address.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        raise ParameterError(f"Dask scheduler address must look like tcp://HOST:PORT, got {dask_address!r}")


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
