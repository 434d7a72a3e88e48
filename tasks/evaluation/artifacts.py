"""Prefect artifacts: a scoring run's summary and a report's headline table, shown in the Prefect UI
on the flow run that made them, beside the files on disk.

Outside a flow run (a plain function call, a test) nothing is published.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext, TaskRunContext

# Prefect artifact keys: lowercase letters, digits and dashes
_KEY_CHARS = re.compile(r"[^a-z0-9-]+")


def artifact_key(*parts: str) -> str:
    """A valid artifact key from free text: `("score", "ped2", "demo_0.2")` -> `score-ped2-demo-0-2`."""
    key = "-".join(_KEY_CHARS.sub("-", p.lower()).strip("-") for p in parts if p)
    return re.sub(r"-{2,}", "-", key).strip("-")


def in_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def _rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Table rows as JSON-safe values (floats rounded for reading, NaN as None)."""
    out = []
    for row in frame.to_dict(orient="records"):
        out.append({k: (None if isinstance(v, float) and v != v else round(v, 4) if isinstance(v, float) else
                        v if isinstance(v, (int, str, bool)) or v is None else str(v)) for k, v in row.items()})
    return out


def publish_score_run(dataset: str, run_id: str, text: str, record: dict[str, Any]) -> bool:
    """A scoring run's summary (Markdown) and its counts (a one-row table); False outside a run."""
    if not in_run():
        return False
    key = artifact_key("score", dataset, run_id)
    create_markdown_artifact(markdown=f"### score {dataset}, run {run_id}\n\n```\n{text}\n```\n", key=key,
                             description=f"scoring run {run_id} of {dataset}")
    create_table_artifact(table=_rows(pd.DataFrame([record])), key=f"{key}-counts",
                          description=f"clips, frames and escalations of run {run_id}")
    return True


def publish_report(folder: str | Path, headline: pd.DataFrame) -> bool:
    """A report's Markdown (report.md) and its headline metrics as a table; False outside a run."""
    if not in_run():
        return False
    folder = Path(folder)
    key = artifact_key("report", folder.name)
    markdown = (folder / "report.md").read_text() if (folder / "report.md").exists() else f"report: {folder}"
    create_markdown_artifact(markdown=markdown, key=key, description=f"report {folder}")
    create_table_artifact(table=_rows(headline), key=f"{key}-headline", description=f"headline metrics of {folder}")
    return True
