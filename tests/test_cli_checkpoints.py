"""Which checkpoint `vad score` and `vad run` use when none is named: the README's tutorial leaves
`small-motion_patch.pt` (the default architecture) beside `small-topheavy.pt`, and following it must
go on working; several checkpoints none of which is the default stay an error that names them."""

from __future__ import annotations

from pathlib import Path

import pytest

from vad.errors import NotFoundError, ParameterError


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")  # the lookup reads names only


def test_the_one_checkpoint_of_a_role_is_used_whatever_its_architecture(tmp_path):
    from vad.tasks.runtime.checkpoint import find_checkpoint

    _touch(tmp_path / "checkpoints" / "cam", "small-topheavy.pt", "large-objects.pt")
    assert find_checkpoint(str(tmp_path), "cam", "small") == str(tmp_path / "checkpoints" / "cam" / "small-topheavy.pt")


def test_the_default_architecture_wins_among_several(tmp_path):
    from vad.models import DEFAULT_ARCH
    from vad.tasks.runtime.checkpoint import find_checkpoint

    folder = tmp_path / "checkpoints" / "cam"
    _touch(folder, "small-topheavy.pt", f"small-{DEFAULT_ARCH['small']}.pt", "small-vae3d-motion.pt",
           "large-predictor-wide.pt", f"large-{DEFAULT_ARCH['large']}.pt")
    assert find_checkpoint(str(tmp_path), "cam", "small") == str(folder / f"small-{DEFAULT_ARCH['small']}.pt")
    assert find_checkpoint(str(tmp_path), "cam", "large") == str(folder / f"large-{DEFAULT_ARCH['large']}.pt")


def test_several_without_the_default_are_refused_naming_them(tmp_path):
    from vad.tasks.runtime.checkpoint import find_checkpoint

    _touch(tmp_path / "checkpoints" / "cam", "small-topheavy.pt", "small-vae3d.pt")
    with pytest.raises(ParameterError, match=r"small-topheavy\.pt, small-vae3d\.pt.*--small PATH"):
        find_checkpoint(str(tmp_path), "cam", "small")
    with pytest.raises(NotFoundError, match="no large checkpoint"):
        find_checkpoint(str(tmp_path), "cam", "large")


def test_score_refuses_several_checkpoints_in_a_second_naming_them(tmp_path, vad_main, synthetic_store):
    import shutil

    root = tmp_path / "ws"
    shutil.copytree(synthetic_store, root / "stores" / "cam.zarr")
    _touch(root / "checkpoints" / "cam", "small-topheavy.pt", "small-vae3d.pt")
    code, out, err = vad_main("score", "--dataset", "cam", "--root", str(root))
    assert code == 2 and out == "", err
    assert err.startswith("error: several small checkpoints") and "small-vae3d.pt" in err and len(err.splitlines()) == 1
    assert not list(root.rglob("*.db"))  # refused before Prefect started its server (and database)


def test_score_says_why_it_chose_a_checkpoint_among_several(tmp_path):
    from vad.flows.cli import _found_because

    folder = tmp_path / "checkpoints" / "cam"
    _touch(folder, "small-motion_patch.pt", "small-topheavy.pt", "large-objects.pt")
    assert _found_because(str(folder / "large-objects.pt"), "large") == ""
    assert _found_because(str(folder / "small-motion_patch.pt"), "small") == (
        " (the default architecture's, of 2 small checkpoints there; --small PATH for another)")
