"""Orchestration overhead of scoring: the score flow on the default runner (threads) and on a local
Dask cluster, against the same stage functions called in a plain loop.

    python benchmarks/orchestration.py [--root vad-workspace] [--dataset ped2] [--budget 0.2] [--repeat 3]

Needs a workspace where `vad ingest` and `vad train` (small and large) have run for the dataset
(the README's Ped2 section). Every mode scores the dataset's test videos with the same checkpoints
and budget and writes a run of clip and frame tables; each is timed `--repeat` times, in turns, and
the median is reported. The Prefect API (a temporary server unless PREFECT_API_URL is set) is
started once before the timings; its start-up is reported on its own line. Dask times include
starting and stopping the local cluster, as a run pays them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import pandas as pd
from vad.tasks.inference.routing import BatchBudget
from vad.tasks.inference.scoring import ScoreSettings, score_dataset
from vad.tasks.operations.runners import RunnerSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="vad-workspace")
    ap.add_argument("--dataset", default="ped2")
    ap.add_argument("--budget", type=float, default=0.2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dask-workers", type=int, default=2)
    args = ap.parse_args()
    if not os.environ.get("PREFECT_API_URL") and not os.environ.get("PREFECT_HOME"):
        os.environ["PREFECT_HOME"] = str(Path(args.root).resolve() / ".prefect")

    from prefect import flow
    from vad.flows.score import score_flow

    @flow
    def warm_up() -> None:
        pass

    t0 = time.perf_counter()
    warm_up()
    startup = time.perf_counter() - t0

    settings = ScoreSettings(BatchBudget(args.budget))

    def loop() -> None:
        score_dataset(args.root, args.dataset, budget=settings.budget, run_id="bench-loop")

    def threads() -> None:
        score_flow(dataset=args.dataset, root=args.root, run_id="bench-threads", settings=settings)

    def dask() -> None:
        score_flow(dataset=args.dataset, root=args.root, run_id="bench-dask", settings=settings,
                   runner=RunnerSpec("dask", workers=args.dask_workers))

    modes = {"plain loop": loop, "flow, threads (default)": threads, f"flow, local Dask ({args.dask_workers} processes)": dask}
    times: dict[str, list[float]] = {name: [] for name in modes}
    loop()  # warm the page cache and the checkpoint cache before timing anything
    for _ in range(args.repeat):
        for name, fn in modes.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["plain loop"])
    rows = [{
        "mode": name, "median s": statistics.median(ts), "min s": min(ts), "max s": max(ts),
        "overhead vs loop": statistics.median(ts) / base - 1,
    } for name, ts in times.items()]
    print(f"Prefect API start-up (once per process, before the timings): {startup:.1f} s")
    print(f"{args.dataset}, budget {args.budget:g}, {args.repeat} runs each, {os.cpu_count()} CPUs")
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, formatters={
        "median s": "{:.2f}".format, "min s": "{:.2f}".format, "max s": "{:.2f}".format, "overhead vs loop": "{:+.1%}".format,
    }))


if __name__ == "__main__":
    main()
