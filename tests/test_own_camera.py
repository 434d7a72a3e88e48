"""A user's own camera, end to end: `vad run` with no flags on a colour folder without labels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vad.tasks.sources.synthetic import SyntheticSpec, make_synthetic

pytestmark = pytest.mark.integration


def _colour_folder(base: Path) -> Path:
    """train/ and test/ of colour H.264 videos, with no labels.csv (what a user brings)."""
    folder = base / "cam"
    make_synthetic(folder, SyntheticSpec(n_train=3, n_test=2, frames=64, height=48, width=64, objects=2, seed=3))
    (folder / "labels.csv").unlink()
    (folder / "synthetic.json").unlink(missing_ok=True)
    return folder


def test_default_run_on_an_unlabelled_colour_folder_writes_a_report_and_events(tmp_path: Path, prefect_api_env) -> None:
    folder = _colour_folder(tmp_path)
    root = tmp_path / "ws"
    vad = Path(sys.executable).with_name("vad")
    # on the session's Prefect API; a user's temporary server is tested in tests/test_cli_signals.py
    # and tests/test_video_ids.py (`vad ingest` with no Prefect settings: no traceback either)
    proc = subprocess.run([str(vad), "run", "--dataset", "cam", "--source", str(folder), "--root", str(root)],
                          capture_output=True, text=True, env=prefect_api_env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr

    from vad.storage import ClipStore, read_table

    store = ClipStore.open(str(root / "stores" / "cam.zarr"))
    video = store.video(store.video_ids(split="test")[0])
    assert video.frames.shape[-1] == 3  # stored in colour: no --gray needed
    assert (video.labels == -1).all()  # and no labels

    report = root / "reports" / "latest"
    html = (report / "report.html").read_text()
    assert "<img" in html and "data:image/png;base64," in html  # stands alone
    assert "alarms per hour" in html.lower()

    events = read_table(root, "events", dataset="cam")
    for column in ("video", "event", "start_frame", "end_frame", "start_s", "end_s", "peak_frame", "peak_score",
                   "mean_score", "escalated_share", "x0", "y0", "x1", "y1"):
        assert column in events.columns
    if len(events):
        assert (events.end_frame >= events.start_frame).all()
        assert (events.end_s >= events.start_s).all()
        assert np.all(events.peak_frame.between(events.start_frame, events.end_frame))
    runs = sorted((root / "scores" / "runs" / "dataset=cam").glob("run=*/run.json"))
    assert [r.parent.name for r in runs] == ["run=latest-budget-0.2"]  # no labels: no every-clip run for a sweep
    record = json.loads(runs[-1].read_text())
    assert "events" in json.dumps(record)  # the event settings are recorded beside the output
    assert "ingest" in proc.stdout  # it says what it is doing at each stage
