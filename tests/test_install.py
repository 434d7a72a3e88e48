"""The install the README documents is the one CI runs, and its pinned versions fit the project's ranges."""

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"Install what the tests need.*?```bash\n(.*?)\n```", readme, re.S)
    assert block, "the README's test command block is missing"
    command = block.group(1).strip()
    assert "-c constraints.txt" in command
    assert (REPO / ".ci" / "run").read_text().strip().splitlines()[-1] == command
    demo = re.search(r"Run the main job.*?```bash\n(.*?)\n```", readme, re.S).group(1)
    assert "-c constraints.txt" in demo


def test_every_pinned_version_is_inside_the_project_ranges():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _pins()
    assert pins["torch"] == "2.13.0"  # the README installs exactly this build first
    for text in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} is outside {req.specifier}"
        assert any(spec.operator in ("<", "<=", "==", "~=") for spec in req.specifier), f"{req.name} has no upper bound"
