"""The installed `vad` command as a user meets it: a mistake on the command line is one `error:` line
and exit 2 (never a traceback), whichever typer is installed; `--help` reads cleanly; an ingest that
ingests nothing leaves no store behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

VAD = Path(sys.executable).with_name("vad")  # the console script pip installed next to this Python


def vad(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    assert VAD.is_file(), f"no installed `vad` entry point next to {sys.executable}; pip install -e . first"
    return subprocess.run([str(VAD), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "VAD_ROOT": str(cwd / "ws"), **(env or {})})


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["run"], ["--dataset"]),                                          # a required option missing
        (["ingest"], ["SOURCE"]),                                          # a required argument missing
        (["run", "--dataset", "x", "--budget", "abc"], ["--budget"]),  # a value of the wrong type
        (["synth", "--frames", "1.5"], ["--frames"]),
        (["run", "--dataset", "x", "--bogus"], ["--bogus"]),               # an unknown option
        (["frobnicate"], ["frobnicate"]),                                  # an unknown command
        (["train", "--dataset"], ["--dataset"]),                           # an option without its value
        (["run", "--dataset", "x", "--minmax=yes"], ["--minmax"]),         # a flag given a value
        (["ingest", "a", "b", "--dataset", "x"], ["b"]),                   # one argument too many
        (["train", "--dataset", "x", "--model", "medium"], ["--model", "small or large", "medium"]),
        (["score", "--dataset", "x", "--signals", "ood,bogus"], ["unknown signal", "bogus"]),  # a router setting
        (["score", "--dataset", "x", "--ood-quantile", "1.5"], ["ood_quantile", "1.5"]),
    ],
    ids=" ".join,
)
def test_a_usage_error_is_one_line_and_exit_2(tmp_path, monkeypatch, vad_main, args, needles):
    monkeypatch.setenv("VAD_ROOT", str(tmp_path / "ws"))
    code, out, err = vad_main(*args)
    assert code == 2, err
    assert "Traceback" not in err and "╭" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0]
    assert "role" not in lines[0]
    assert out == ""
    assert not (tmp_path / "ws").exists()  # nothing was started or written


@pytest.mark.parametrize(("args", "needle"), [
    (["run", "--dataset", "x", "--budget", "abc"], "--budget"),  # click's own error
    (["score", "--dataset", "x", "--ood-quantile", "1.5"], "ood_quantile"),  # the project's ParameterError
])
def test_the_installed_script_prints_a_mistake_in_one_line(tmp_path, args, needle):
    proc = vad(*args, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert not (tmp_path / "ws").exists()


def test_vad_alone_lists_the_commands_and_exits_2(tmp_path):
    proc = vad(cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "Usage: vad [OPTIONS] COMMAND" in proc.stdout
    for command in ("ingest", "train", "score", "backfill", "synth", "run", "demo"):
        assert f"  {command} " in proc.stdout


@pytest.mark.parametrize("command", [[], ["ingest"], ["train"], ["score"], ["backfill"], ["synth"], ["run"], ["demo"]])
def test_help_shows_no_placeholder_types_or_braces(tmp_path, command):
    proc = vad(*command, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith(f"Usage: vad {' '.join(command)}".rstrip())
    assert "<bool>" not in text and "{" not in text and "}" not in text
    assert "--help" in text and "Show this message and exit." in text


def test_help_names_arguments_and_explains_every_option(tmp_path):
    ingest = vad("ingest", "--help", cwd=tmp_path).stdout
    assert ingest.splitlines()[0] == "Usage: vad ingest [OPTIONS] SOURCE"
    assert "--gray / --rgb" in ingest
    synth = vad("synth", "--help", cwd=tmp_path).stdout
    assert synth.splitlines()[0] == "Usage: vad synth [OPTIONS] [OUT_DIR]"
    run = vad("run", "--help", cwd=tmp_path).stdout
    for option in ("--small-epochs", "--large-epochs"):
        line = next(line for line in run.splitlines() if line.strip().startswith(option))
        assert "epochs" in line.replace(option, ""), line  # has its own help text


@pytest.mark.integration
def test_an_ingest_whose_only_video_fails_leaves_no_store_and_prints_only_the_failure(tmp_path, prefect_server):
    from vad.tasks.operations.runners import current_api_url

    data = tmp_path / "data"
    data.mkdir()
    (data / "broken.mp4").write_bytes(b"not a video")
    proc = vad("ingest", str(data), "--dataset", "one", cwd=tmp_path, env={"PREFECT_API_URL": current_api_url()}, timeout=180)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [line for line in proc.stderr.splitlines() if line.startswith("FAILED broken: ")]
    assert len(proc.stderr.splitlines()) == 1 and "not a readable video" in proc.stderr
    assert "ingested 0, skipped 0 (unchanged), failed 1" in proc.stdout
    assert "store:" not in proc.stdout
    assert not (tmp_path / "ws" / "stores" / "one.zarr").exists()


def test_version_prints_the_installed_package_version_and_starts_nothing(tmp_path, monkeypatch, vad_main):
    from importlib.metadata import version

    monkeypatch.setenv("VAD_ROOT", str(tmp_path / "ws"))
    code, out, err = vad_main("--version")
    assert (code, out, err) == (0, f"vad {version('video-anomaly-router')}\n", "")
    assert not (tmp_path / "ws").exists()
