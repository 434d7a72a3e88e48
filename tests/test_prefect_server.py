"""The deployments on a real Prefect server: a server on 127.0.0.1, the process work pool, the
deployments of prefect.yaml, a worker, and the backfill deployment triggered twice over the same
range (the second run does no model work). Everything started here is stopped here.

`prefect deploy` and `prefect worker start` run as the user runs them; the pool, the queue and the
two runs are made through the REST API that `prefect work-pool create` and `prefect deployment run`
call, which saves a Prefect process each (2.7-5.8 s apiece on 2 cores, measured)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from vad.storage import read_table

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture
def server(tmp_path):
    """A Prefect server of its own (own home and database), up within 180 s or the test fails."""
    port = _free_port()
    env = {
        **os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # the worker asks for runs every second, not every 10 s
    }
    (tmp_path / "prefect-home").mkdir()
    log = open(tmp_path / "server.log", "w")
    # no UI (nothing here reads it) and no scheduler: the nightly run it would create at 02:00 must not
    # join the runs triggered here when the test crosses 02:00; the schedule itself is read back below
    proc = subprocess.Popen([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui",
                             "--no-scheduler"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("Prefect server did not start:\n" + (tmp_path / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield env
    finally:
        _stop(proc)
        log.close()


RETRIED = (408, 429, 502, 503)  # the statuses Prefect's own client retries (prefect/client/base.py)


def _api(env, path: str, body: dict | None = None, attempts: int = 6) -> dict:
    """GET `path` of the server's API, or POST `body` to it as JSON. A busy server answers 503 while
    its SQLite database is locked by another writer (the worker, a flow run); like Prefect's own
    client, the call is retried then, with waits of 0.5, 1, 2, ... s."""
    data = None if body is None else json.dumps(body).encode()
    for attempt in range(attempts):
        request = urllib.request.Request(env["PREFECT_API_URL"] + path, data=data,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code not in RETRIED or attempt == attempts - 1:
                raise
        time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def _run_deployment(env, name: str, parameters: dict, timeout: float = 400) -> None:
    """Trigger a run of deployment `name` and wait for it to end; fail unless it completed."""
    deployment = _api(env, f"/deployments/name/{name}")
    run = _api(env, f"/deployments/{deployment['id']}/create_flow_run", {"parameters": parameters})
    deadline = time.monotonic() + timeout
    while (state := _api(env, f"/flow_runs/{run['id']}")["state"])["type"] not in (
            "COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        assert time.monotonic() < deadline, f"the run of {name} did not end within {timeout} s: {state}"
        time.sleep(0.5)
    assert state["type"] == "COMPLETED", f"the run of {name} ended {state['type']}: {state.get('message')}"


def _prefect(env, *args, timeout=120) -> str:
    result = subprocess.run([*PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_backfill_deployment_runs_on_a_worker_and_a_second_run_does_no_model_work(server, camera_workspace, tmp_path):
    root, archive, _ = camera_workspace
    root = str(shutil.copytree(root, tmp_path / "ws"))
    env = server
    from prefect.workers.process import ProcessWorker

    _api(env, "/work_pools/", {"name": "vad-process", "type": "process",
                               "base_job_template": ProcessWorker.get_default_base_job_template()})
    _api(env, "/work_pools/vad-process/queues", {"name": "archive", "concurrency_limit": 1})
    worker_log = open(tmp_path / "worker.log", "w")  # started now, so that its start-up overlaps the deploys
    worker = subprocess.Popen([*PREFECT, "worker", "start", "--pool", "vad-process"], env=env, cwd=REPO,
                              stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _deploy_and_run(env, archive, root, tmp_path)
    finally:
        _stop(worker)
        worker_log.close()


def _deploy_and_run(env, archive: str, root: str, tmp_path: Path) -> None:
    _prefect(env, "--no-prompt", "deploy", "--name", "backfill")
    _prefect(env, "--no-prompt", "deploy", "--name", "nightly", "--param", f"archive={archive}", "--param", "dataset=cam",
             "--param", f"root={root}")
    # read back through the API (what `prefect deployment inspect` prints, without a process each)
    nightly = _api(env, "/deployments/name/backfill/nightly")
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]  # the schedule exists,
    assert nightly["parameters"]["archive"] == archive  # with the deploy-time parameters
    assert nightly["parameters"]["settings"]["scoring"]["budget"] == {"fraction": 0.2}  # and prefect.yaml's nested ones
    assert nightly["work_queue_name"] == _api(env, "/deployments/name/backfill/backfill")["work_queue_name"] == "archive"
    assert _api(env, "/work_pools/vad-process/queues/archive")["concurrency_limit"] == 1  # one run at a time

    params = {"archive": archive, "dataset": "cam", "root": root, "since": "2026-11-20", "until": "2026-11-21"}
    _run_deployment(env, "backfill/backfill", params)
    videos = read_table(root, "videos", dataset="cam")
    assert sorted(videos.video) == ["2026-11-20_cam-0", "2026-11-21_cam-1"]  # the third video is dated the 22nd
    clips = read_table(root, "clips", dataset="cam")
    assert len(clips) == 8 and clips.groupby("video").size().tolist() == [4, 4]
    parts = {p: p.stat().st_mtime_ns for p in (Path(root) / "scores").rglob("*.parquet")}

    _run_deployment(env, "backfill/backfill", params)
    assert {p: p.stat().st_mtime_ns for p in parts} == parts  # no part rewritten: no model work
    assert "scored 0, skipped 2" in (tmp_path / "worker.log").read_text()
