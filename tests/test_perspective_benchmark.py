"""`benchmarks/perspective.py`: Ped2's layout in, the generic folder layout out, every frame through
a homography that squeezes the top edge and keeps the bottom one."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("perspective_benchmark", REPO / "benchmarks" / "perspective.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ped2_like(root: Path, h: int = 24, w: int = 36) -> Path:
    """Ped2's layout with one white training video and one test video of 3 frames each."""
    for split in ("training", "testing"):
        folder = root / split / "frames" / "01"
        folder.mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((h, w, 3), 255, np.uint8))
    (root / "test_labels.csv").write_text("video,frame,label\n01,0,0\n01,1,1\n01,2,0\n")
    return root


def test_the_top_edge_is_squeezed_to_the_given_width_and_the_bottom_edge_kept():
    m = _script().homography(240, 360, 1 / 3)
    corners = cv2.perspectiveTransform(np.float32([[[0, 0], [360, 0], [0, 240], [360, 240]]]), m)[0]
    np.testing.assert_allclose(corners, [[120, 0], [240, 0], [0, 240], [360, 240]], atol=1e-3)


def test_the_warped_dataset_has_the_generic_layout_and_ped2s_labels(tmp_path):
    src, out = _ped2_like(tmp_path / "ped2"), tmp_path / "out"
    assert _script().main(["--ped2", str(src), "--out", str(out), "--top-scale", "0.5"]) == 0
    assert sorted(p.name for p in (out / "train" / "train_01").iterdir()) == ["000.png", "001.png", "002.png"]
    frame = cv2.imread(str(out / "test" / "test_01" / "001.png"), cv2.IMREAD_GRAYSCALE)
    lit_top, lit_bottom = np.flatnonzero(frame[0] > 127), np.flatnonzero(frame[-1] > 127)
    # a white frame: its top row is lit over half the width about the centre, its bottom row over all of it
    assert abs(len(lit_top) - 18) <= 1 and abs(lit_top.mean() - 17.5) <= 1
    assert len(lit_bottom) >= 34  # the corner pixels blend with the black border
    with open(out / "labels.csv", newline="") as f:
        assert [(r["video"], r["frame"], r["label"]) for r in csv.DictReader(f)] == [
            ("test_01", "0", "0"), ("test_01", "1", "1"), ("test_01", "2", "0")]


def test_an_existing_output_folder_or_a_wrong_source_is_refused(tmp_path, capsys):
    src = _ped2_like(tmp_path / "ped2")
    (tmp_path / "taken").mkdir()
    with pytest.raises(SystemExit):
        _script().main(["--ped2", str(src), "--out", str(tmp_path / "taken")])
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _script().main(["--ped2", str(tmp_path), "--out", str(tmp_path / "new")])
    assert "is --ped2 the UCSD Ped2 folder" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
