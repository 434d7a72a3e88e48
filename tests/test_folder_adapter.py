import pytest
from conftest import TINY, ramp_frames, write_frames
from vad.tasks.sources.datasets import discover

from vad.errors import DatasetLayoutError, NotFoundError


def test_synthetic_layout_gives_splits_ids_and_labels(tiny_dataset):
    videos = discover(tiny_dataset, "folder")
    assert [(v.video_id, v.split, v.kind) for v in videos] == [
        ("normal_00", "train", "file"), ("normal_01", "train", "file"),
        ("test_00", "test", "file"), ("test_01", "test", "file"),
    ]
    test = videos[2]
    assert test.labels is not None and test.labels.shape == (TINY.frames,)
    assert videos[0].labels is None  # training footage: normal, recorded as 0 at ingest
    assert videos[0].frame_labels(3).tolist() == [0, 0, 0]


def test_frame_folders_and_clashing_stems(tmp_path):
    write_frames(tmp_path / "train" / "cam1", ramp_frames(3))
    write_frames(tmp_path / "night" / "cam1", ramp_frames(4))
    videos = discover(tmp_path, "folder")
    # Both folders are called cam1, so ids fall back to the relative path.
    assert [(v.video_id, v.split, v.kind, len(v.frame_files)) for v in videos] == [
        ("train_cam1", "train", "frames", 3), ("night_cam1", "test", "frames", 4),
    ]
    assert videos[1].frame_labels(4).tolist() == [-1] * 4  # unlabelled test footage: unknown


def test_labels_for_a_missing_video_are_an_error(tmp_path):
    write_frames(tmp_path / "test" / "a", ramp_frames(2))
    (tmp_path / "labels.csv").write_text("video,frame,label\nb,0,1\nb,1,0\n")
    with pytest.raises(DatasetLayoutError, match="labels.csv.*'b'"):
        discover(tmp_path, "folder")


def test_labels_with_gaps_or_bad_values_are_errors(tmp_path):
    write_frames(tmp_path / "test" / "a", ramp_frames(3))
    (tmp_path / "labels.csv").write_text("video,frame,label\na,0,1\na,2,0\n")
    with pytest.raises(DatasetLayoutError, match="missing"):
        discover(tmp_path, "folder")
    (tmp_path / "labels.csv").write_text("video,frame,label\na,0,2\n")
    with pytest.raises(DatasetLayoutError, match="0 or 1"):
        discover(tmp_path, "folder")


def test_missing_or_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(NotFoundError, match="nowhere"):
        discover(tmp_path / "nowhere")
    with pytest.raises(DatasetLayoutError, match="no videos"):
        discover(tmp_path, "folder")
    with pytest.raises(Exception, match="unknown dataset format"):
        discover(tmp_path, "vhs")
