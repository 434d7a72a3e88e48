"""The project installs under one import name: `vad`."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_only_vad_is_importable_as_a_top_level_name(tmp_path):
    # run from an empty folder, so the repository's own folders are not on the path
    code = (
        "import importlib.util as u, vad, vad.flows.cli, vad.tasks.inference.scoring, vad.models, vad.storage, vad.errors;"
        "print([n for n in ('flows', 'tasks', 'models', 'storage', 'errors') if u.find_spec(n) is not None])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_installed_package_is_under_vad_and_the_entry_point_too():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]
    assert packages and all(p == "vad" or p.startswith("vad.") for p in packages)
    # every folder with an __init__.py under the four source folders is listed
    found = {"vad"} | {"vad." + ".".join(p.parent.relative_to(REPO).parts) for top in ("flows", "models", "storage", "tasks")
                       for p in (REPO / top).rglob("__init__.py")}
    assert found == set(packages)
    assert project["project"]["scripts"]["vad"] == "vad.flows.cli:main"
