"""A `vad` command stopped by SIGTERM (as `timeout`, systemd or `docker stop` stop it) ends as Ctrl-C
does: one line on stderr and exit 130, even when the signal also stopped Prefect's temporary server
(its client would otherwise retry the dead server for over a minute and print an httpx traceback)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

VAD = Path(sys.executable).with_name("vad")


@pytest.mark.integration
def test_sigterm_to_the_process_group_during_training_is_one_line_and_exit_130(tmp_path, synthetic_store):
    import shutil

    root = tmp_path / "ws"
    shutil.copytree(synthetic_store, root / "stores" / "cam.zarr")
    env = {**os.environ, "VAD_ROOT": str(root), "TQDM_DISABLE": "1", "DO_NOT_TRACK": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)  # its own temporary server, in its process group, as a user's run has
    env.pop("PREFECT_HOME", None)
    args = [str(VAD), "train", "--dataset", "cam", "--arch", "topheavy", "--size", "32x32", "--epochs", "1000"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            start_new_session=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("training topheavy"):  # the training has started
                break
        else:
            pytest.fail(f"training never started: {''.join(err)}")
        os.killpg(proc.pid, signal.SIGTERM)  # every process of the run, the temporary server included
        code = proc.wait(timeout=60)  # prompt in practice (a few seconds); generous so it is no timing test
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    reader.join(timeout=30)
    lines = [line for line in "".join(err).splitlines() if line.strip()]
    assert code == 130, "".join(err)
    assert len(lines) == 1 and lines[0].startswith("interrupted; "), "".join(err)
    assert "Traceback" not in "".join(err)


def test_after_an_interrupt_prefects_services_add_no_line(monkeypatch):
    """Prefect's event and log services report their unsent items as an ERROR on the logger
    prefect._internal.concurrency once the temporary server is gone. That logger decides by a
    setting, not by its level (Prefect's SafeLogger), so the interrupt must switch it off."""
    import logging

    from prefect._internal.concurrency import logger as concurrency
    from vad.flows.cli import Interrupted, _interruptible

    internal = logging.getLogger("prefect._internal")
    # on from the start (an interrupt tested earlier in this process switched them off), and put back afterwards
    for name in [*logging.root.manager.loggerDict, "prefect._internal"]:
        if name.startswith("prefect._internal"):
            monkeypatch.setattr(logging.getLogger(name), "disabled", False)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    internal.addHandler(handler)
    try:
        concurrency.error("before the interrupt")
        with pytest.raises(Interrupted):
            with _interruptible("interrupted"):
                os.kill(os.getpid(), signal.SIGINT)
        concurrency.error("Service 'EventsWorker' failed with 7 pending items.")
    finally:
        internal.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["before the interrupt"]
