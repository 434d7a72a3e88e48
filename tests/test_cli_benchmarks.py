"""Every benchmark script runs as the README writes it, `python benchmarks/X.py` from the repository
root (the script's folder is on the path then, not the repository)."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_benchmark_script_starts_from_the_repository_root(script, capsys, monkeypatch):
    """The script as `python benchmarks/X.py --help` runs it, in this process (a new interpreter
    per script paid for torch nine times): its folder first on the path, neither the repository
    nor the working folder on it, and no `benchmarks` package imported yet."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "path", [str(REPO / "benchmarks")] + [p for p in sys.path if Path(p or ".").resolve() != REPO])
    monkeypatch.setattr(sys, "argv", [f"benchmarks/{script}", "--help"])
    for name in [m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks.")]:
        monkeypatch.delitem(sys.modules, name)
    saved = dict(os.environ)
    try:
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(REPO / "benchmarks" / script), run_name="__main__")
    finally:  # a script's environment defaults (orchestration.py sets Prefect's) end with it
        for key in set(os.environ) - set(saved):
            del os.environ[key]
    for name in [m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks.")]:
        del sys.modules[name]  # imported from the path above: not for later tests
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert out.startswith(f"usage: {script}"), out


def test_a_benchmark_script_starts_in_a_new_interpreter_from_the_repository_root():
    """One script for real, importing a sibling (`benchmarks.throughput`) the way a user's shell runs it."""
    proc = subprocess.run([sys.executable, "benchmarks/archive_disk.py", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: archive_disk.py"), proc.stdout
