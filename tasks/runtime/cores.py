"""How many CPU cores this process may use, without importing torch: the task runners (and so every
`vad` command that starts a flow, `vad ingest` included) need the count, and torch's import costs a
command 1-2 s. `compute` re-exports both functions."""

from __future__ import annotations

import os


def machine_cores() -> int:
    """CPU cores of this machine that this process may run on: the affinity mask (which containers
    and taskset narrow), else the core count (not on Linux)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def available_cores() -> int:
    """CPU cores this process may use for torch: `$VAD_TORCH_THREADS` when set (a local Dask cluster
    sets it to share the cores among its worker processes, the test suite among its workers), else
    `machine_cores`."""
    if os.environ.get("VAD_TORCH_THREADS", "").isdigit() and int(os.environ["VAD_TORCH_THREADS"]) > 0:
        return int(os.environ["VAD_TORCH_THREADS"])
    return machine_cores()
