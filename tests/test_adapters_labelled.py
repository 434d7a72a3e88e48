"""Adapters for the labelled benchmarks: UCSD Ped1/Ped2, CUHK Avenue, ShanghaiTech, UCF-Crime.

Each layout is rebuilt in miniature under tmp_path. Adapters only list files and never decode
them, so image and video files hold placeholder bytes. Real label files come from
`../shared/datasets` (override with VAD_SHARED); the tests that need them are marked
`integration` and skip without it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from vad.tasks.sources.datasets import (
    ADAPTERS,
    VideoSource,
    avenue,
    detect_format,
    discover,
    read_labels_csv,
    shanghaitech,
    ucf_crime,
    ucsd,
)

from vad.errors import DatasetLayoutError

SHARED = Path(os.environ.get("VAD_SHARED") or Path(__file__).resolve().parents[2] / "shared")


def shared(relative: str) -> Path:
    """A path under shared/datasets, or skip the test when the real data is not there."""
    path = SHARED / "datasets" / relative
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set VAD_SHARED to the shared folder)")
    return path


def touch(folder: Path, *names: str) -> None:
    """Placeholder files: the adapters never open them."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"placeholder")


def frames(folder: Path, n: int, ext: str = ".jpg") -> None:
    touch(folder, *(f"{i:03d}{ext}" for i in range(n)))


def by_id(videos: list[VideoSource]) -> dict[str, VideoSource]:
    return {v.video_id: v for v in videos}


def labels_of(video: VideoSource) -> np.ndarray:
    """Per-frame labels of a frame-folder video, as the ingest would compute them."""
    assert video.frame_files is not None
    return video.frame_labels(len(video.frame_files))


def save_masks(path: Path, frame_labels: list[int]) -> None:
    """An Avenue-style `volLabel` cell of 4x6 masks, one pixel set on anomalous frames."""
    cell = np.empty((1, len(frame_labels)), dtype=object)
    for i, label in enumerate(frame_labels):
        mask = np.zeros((4, 6), dtype=np.uint8)
        mask[1, 2] = label
        cell[0, i] = mask
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"volLabel": cell})


# ---------------------------------------------------------------- replicas

PED_M = "TestVideoFile = {};\nTestVideoFile{end+1}.gt_frame = [2:3];\nTestVideoFile{end+1}.gt_frame = [1:1, 4:4];\n"


def make_ucsd_official(root: Path, m_text: str = PED_M) -> Path:
    for vid in ("Train001", "Train002"):
        frames(root / "Train" / vid, 3, ".tif")
    touch(root / "Train" / "Train001", "._000.tif")  # macOS resource fork: not a frame
    touch(root / "Train", ".DS_Store")
    for vid in ("Test001", "Test002"):
        frames(root / "Test" / vid, 4, ".tif")
    touch(root / "Test" / "Test001_gt", "000.bmp")  # pixel masks: not a video
    (root / "Test" / "UCSDped2.m").write_text(m_text)
    return root


def make_ucsd_common(root: Path) -> Path:
    for split, n in (("training", 3), ("testing", 4)):
        for vid in ("01", "02"):
            frames(root / split / "frames" / vid, n)
    rows = [f"01,{i},{y}" for i, y in enumerate([0, 0, 1, 1])] + [f"02,{i},{y}" for i, y in enumerate([1, 0, 0, 0])]
    (root / "test_labels.csv").write_text("video,frame,label\n" + "\n".join(rows) + "\n")
    return root


def make_avenue(root: Path) -> Path:
    touch(root / "training_videos", "01.avi", "02.avi")
    touch(root / "testing_videos", "01.avi", "02.avi", "03.avi")
    save_masks(root / "testing_label_mask" / "1_label.mat", [0, 0, 1, 255])
    save_masks(root / "testing_label_mask" / "2_label.mat", [1, 0, 0])
    return root


def make_shanghaitech(root: Path) -> Path:
    touch(root / "training" / "videos", "01_001.avi", "01_002.avi")
    frames(root / "testing" / "frames" / "01_0014", 3)
    frames(root / "testing" / "frames" / "01_0015", 2)
    (root / "testing" / "test_frame_mask").mkdir()
    np.save(root / "testing" / "test_frame_mask" / "01_0014.npy", np.array([0, 1, 1], dtype=np.uint8))
    return root


UCF_ANNOTATION = """\
Abuse028_x264.mp4  Abuse  165  240  -1  -1
Burglary005_x264.mp4  Burglary  10  19  30  30
Normal_Videos_015_x264.mp4  Normal  -1  -1  -1  -1
"""


def make_ucf_crime(root: Path, annotation: str = UCF_ANNOTATION) -> Path:
    touch(root / "Anomaly-Videos-Part-1" / "Abuse", "Abuse028_x264.mp4", "Abuse001_x264.mp4")
    touch(root / "Anomaly-Videos-Part-2" / "Burglary", "Burglary005_x264.mp4")
    touch(root / "Training-Normal-Videos-Part-1", "Normal_Videos_003_x264.mp4")
    touch(root / "Normal_Videos_event", "Normal_Videos_003_x264.mp4")  # same-size duplicate: one video
    touch(root / "Testing_Normal_Videos_Anomaly", "Normal_Videos_015_x264.mp4")
    (root / "Anomaly_Detection_splits").mkdir()
    (root / "Anomaly_Detection_splits" / "Temporal_Anomaly_Annotation_for_Testing_Videos.txt").write_text(annotation)
    return root


# layout -> (the adapter that owns it, builder)
REPLICAS: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "ucsd-official": ("ucsd", make_ucsd_official),
    "ucsd-common": ("ucsd", make_ucsd_common),
    "avenue": ("avenue", make_avenue),
    "shanghaitech": ("shanghaitech", make_shanghaitech),
    "ucf-crime": ("ucf-crime", make_ucf_crime),
}


@pytest.mark.parametrize("layout", sorted(REPLICAS))
def test_each_layout_is_claimed_by_its_adapter_only(tmp_path: Path, layout: str) -> None:
    owner, build = REPLICAS[layout]
    root = build(tmp_path / layout)
    claims = {name for name, adapter in ADAPTERS.items() if name != "folder" and adapter.detect(root)}
    assert claims == {owner}
    assert detect_format(root) == owner


def test_detect_is_false_for_an_empty_folder(tmp_path: Path) -> None:
    assert not any(m.detect(tmp_path) for m in (ucsd, avenue, shanghaitech, ucf_crime))


# ---------------------------------------------------------------- UCSD


def test_ucsd_official_layout(tmp_path: Path) -> None:
    videos = discover(make_ucsd_official(tmp_path), "auto")
    assert [v.video_id for v in videos] == ["Train001", "Train002", "Test001", "Test002"]
    assert all(v.kind == "frames" and len(v.frame_files or ()) == (3 if v.split == "train" else 4) for v in videos)
    found = by_id(videos)
    assert found["Test001"].label_ranges == ((1, 3),)
    assert labels_of(found["Test001"]).tolist() == [0, 1, 1, 0]
    assert labels_of(found["Test002"]).tolist() == [1, 0, 0, 1]
    assert labels_of(found["Train001"]).tolist() == [0, 0, 0]


def test_ucsd_official_without_label_file_has_unknown_labels(tmp_path: Path) -> None:
    root = make_ucsd_official(tmp_path)
    (root / "Test" / "UCSDped2.m").unlink()
    assert labels_of(by_id(ucsd.list_videos(root))["Test002"]).tolist() == [-1] * 4


@pytest.mark.integration
@pytest.mark.parametrize(
    ("m_file", "csv_file", "anomalous"),
    [
        ("ped1-labels/labels_original/UCSDped1.m", "ped1-labels/test_labels.csv", 4045),
        ("ped2/labels_original/UCSDped2.m", "ped2/test_labels.csv", 1648),
    ],
)
def test_ucsd_real_m_file_matches_the_csv(tmp_path: Path, m_file: str, csv_file: str, anomalous: int) -> None:
    expected = read_labels_csv(shared(csv_file))
    frames(tmp_path / "Train" / "Train001", 1, ".tif")
    for key in expected:
        frames(tmp_path / "Test" / f"Test{int(key):03d}", len(expected[key]), ".tif")
    shutil.copy(shared(m_file), tmp_path / "Test")
    found = by_id(discover(tmp_path, "ucsd"))
    assert len(found) == 1 + len(expected)
    for key, labels in expected.items():
        np.testing.assert_array_equal(labels_of(found[f"Test{int(key):03d}"]), labels)
    assert sum(int(labels_of(v).sum()) for v in found.values()) == anomalous


@pytest.mark.integration
def test_ucsd_ped1_test005_two_ranges(tmp_path: Path) -> None:
    for i in range(1, 37):
        frames(tmp_path / "Test" / f"Test{i:03d}", 1, ".tif")
    frames(tmp_path / "Train" / "Train001", 1, ".tif")
    shutil.copy(shared("ped1-labels/labels_original/UCSDped1.m"), tmp_path / "Test")
    video = by_id(ucsd.list_videos(tmp_path))["Test005"]  # gt_frame = [5:90, 140:200]
    assert video.label_ranges == ((4, 90), (139, 200))
    assert int(video.frame_labels(200).sum()) == 86 + 61


@pytest.mark.integration
def test_ucsd_real_ped2_common_layout() -> None:
    root = shared("ped2")
    videos = discover(root, "auto")
    train = [v for v in videos if v.split == "train"]
    test = [v for v in videos if v.split == "test"]
    assert [v.video_id for v in train] == [f"Train{i:03d}" for i in range(1, 17)]
    assert [v.video_id for v in test] == [f"Test{i:03d}" for i in range(1, 13)]
    assert sum(len(v.frame_files or ()) for v in train) == 2550
    assert sum(len(v.frame_files or ()) for v in test) == 2010
    assert all(v.labels is not None for v in test)  # the CSV wins over ped2.mat
    assert sum(int(labels_of(v).sum()) for v in test) == 1648


@pytest.mark.integration
def test_ucsd_ped2_mat_gives_the_csv_labels(tmp_path: Path) -> None:
    real = shared("ped2")
    for part in ("training", "testing"):
        (tmp_path / part).symlink_to(real / part)
    shutil.copy(real / "ped2.mat", tmp_path)
    from_mat = by_id(discover(tmp_path, "ucsd"))
    from_csv = by_id(discover(real, "ucsd"))
    assert from_mat["Test001"].label_ranges == ((60, 180),)
    tests = [vid for vid, v in from_csv.items() if v.split == "test"]
    assert len(tests) == 12
    for vid in tests:
        np.testing.assert_array_equal(labels_of(from_mat[vid]), labels_of(from_csv[vid]))


def test_ucsd_common_layout(tmp_path: Path) -> None:
    videos = discover(make_ucsd_common(tmp_path))
    assert [v.video_id for v in videos] == ["Train001", "Train002", "Test001", "Test002"]
    found = by_id(videos)
    assert labels_of(found["Test001"]).tolist() == [0, 0, 1, 1]
    assert labels_of(found["Test002"]).tolist() == [1, 0, 0, 0]


def test_ucsd_common_mat_labels(tmp_path: Path) -> None:
    root = make_ucsd_common(tmp_path)
    (root / "test_labels.csv").unlink()
    gt = np.empty((1, 2), dtype=object)
    gt[0, 0] = np.array([[3], [4]], dtype=np.uint8)  # 1-based inclusive: frames 3..4
    gt[0, 1] = np.array([[1, 4], [1, 4]], dtype=np.uint8)  # frames 1 and 4
    scipy.io.savemat(root / "ped2.mat", {"gt": gt})
    found = by_id(ucsd.list_videos(root))
    assert labels_of(found["Test001"]).tolist() == [0, 0, 1, 1]
    assert labels_of(found["Test002"]).tolist() == [1, 0, 0, 1]


@pytest.mark.parametrize(
    "bad_line",
    [
        "TestVideoFile{end+1}.gt_frame = [5-90];",
        "TestVideoFile{end+1}.gt_frame = 60:152;",
        "TestVideoFile{end+1}.gt_frame = [0:10];",  # not 1-based
        "TestVideoFile{end+1}.gt_frame = [90:5];",
    ],
)
def test_ucsd_malformed_m_line_names_file_and_line(tmp_path: Path, bad_line: str) -> None:
    m_text = f"TestVideoFile = {{}};\n{bad_line}\nTestVideoFile{{end+1}}.gt_frame = [1:2];\n"
    root = make_ucsd_official(tmp_path, m_text)
    with pytest.raises(DatasetLayoutError, match=r"UCSDped2\.m:2"):
        ucsd.list_videos(root)


def test_ucsd_m_entry_count_must_match_test_videos(tmp_path: Path) -> None:
    root = make_ucsd_official(tmp_path, PED_M + "TestVideoFile{end+1}.gt_frame = [1:2];\n")
    with pytest.raises(DatasetLayoutError, match=r"UCSDped2\.m: 3 label entries for 2 test videos"):
        discover(root)


def test_ucsd_csv_labels_for_a_missing_video(tmp_path: Path) -> None:
    root = make_ucsd_common(tmp_path)
    with open(root / "test_labels.csv", "a") as fh:
        fh.write("07,0,1\n")
    with pytest.raises(DatasetLayoutError, match=r"test_labels\.csv: labels for video '07'"):
        ucsd.list_videos(root)


def test_ucsd_mat_with_wrong_entry_count(tmp_path: Path) -> None:
    root = make_ucsd_common(tmp_path)
    (root / "test_labels.csv").unlink()
    gt = np.empty((1, 1), dtype=object)
    gt[0, 0] = np.array([[1], [2]])
    scipy.io.savemat(root / "ped1.mat", {"gt": gt})
    with pytest.raises(DatasetLayoutError, match=r"ped1\.mat: 1 label entries for 2 test videos"):
        ucsd.list_videos(root)


# ---------------------------------------------------------------- Avenue


def test_avenue_layout(tmp_path: Path) -> None:
    videos = discover(make_avenue(tmp_path), "auto")
    assert [v.video_id for v in videos] == ["train_01", "train_02", "test_01", "test_02", "test_03"]
    assert all(v.kind == "file" and v.uri.endswith(".avi") for v in videos)
    found = by_id(videos)
    assert found["test_01"].frame_labels(4).tolist() == [0, 0, 1, 1]
    assert found["test_02"].frame_labels(3).tolist() == [1, 0, 0]
    assert found["test_03"].frame_labels(2).tolist() == [-1, -1]  # no mask file: unknown


def test_avenue_label_file_for_a_missing_video(tmp_path: Path) -> None:
    root = make_avenue(tmp_path)
    save_masks(root / "testing_label_mask" / "22_label.mat", [0, 1])
    with pytest.raises(DatasetLayoutError, match=r"22_label\.mat: labels for test video 22"):
        avenue.list_videos(root)


def test_avenue_unreadable_mat_names_the_file(tmp_path: Path) -> None:
    root = make_avenue(tmp_path)
    (root / "testing_label_mask" / "2_label.mat").write_bytes(b"not a mat file")
    with pytest.raises(DatasetLayoutError, match=r"2_label\.mat"):
        avenue.list_videos(root)


@pytest.mark.integration
def test_avenue_real_masks_under_ground_truth_demo(tmp_path: Path) -> None:
    masks = shared("avenue-labels/labels_original/testing_label_mask")
    expected = read_labels_csv(shared("avenue-labels/test_labels.csv"))
    touch(tmp_path / "training_videos", "01.avi")
    touch(tmp_path / "testing_videos", "08.avi", "21.avi")
    (tmp_path / "ground_truth_demo" / "testing_label_mask").mkdir(parents=True)
    for n in (8, 21):
        shutil.copy(masks / f"{n}_label.mat", tmp_path / "ground_truth_demo" / "testing_label_mask")
    found = by_id(discover(tmp_path, "avenue"))
    assert found["test_08"].labels is not None and found["test_08"].labels.shape == (36,)  # README: 36 frames
    for key in ("08", "21"):
        np.testing.assert_array_equal(found[f"test_{key}"].labels, expected[key])


@pytest.mark.integration
def test_avenue_real_masks_all_videos(tmp_path: Path) -> None:
    """All 21 official mask files (~15 s: they decompress to 3.5 GB of masks)."""
    counts = [1439, 1211, 923, 947, 1007, 1283, 605, 36, 1175, 841, 472,  # from the Avenue README
              1271, 549, 507, 1001, 740, 426, 294, 248, 273, 76]
    (tmp_path / "testing_label_mask").symlink_to(shared("avenue-labels/labels_original/testing_label_mask"))
    touch(tmp_path / "training_videos", "01.avi")
    touch(tmp_path / "testing_videos", *(f"{i:02d}.avi" for i in range(1, 22)))
    test = [v for v in avenue.list_videos(tmp_path) if v.split == "test"]
    assert [len(v.labels) for v in test] == counts  # type: ignore[arg-type]
    assert sum(int(v.labels.sum()) for v in test) == 3712  # type: ignore[union-attr]
    expected = read_labels_csv(shared("avenue-labels/test_labels.csv"))
    for v in test:
        np.testing.assert_array_equal(v.labels, expected[v.video_id.removeprefix("test_")])


# ---------------------------------------------------------------- ShanghaiTech


def test_shanghaitech_layout(tmp_path: Path) -> None:
    videos = discover(make_shanghaitech(tmp_path), "auto")
    assert [(v.video_id, v.split, v.kind) for v in videos] == [
        ("01_001", "train", "file"), ("01_002", "train", "file"),
        ("01_0014", "test", "frames"), ("01_0015", "test", "frames"),
    ]
    found = by_id(videos)
    assert labels_of(found["01_0014"]).tolist() == [0, 1, 1]
    assert labels_of(found["01_0015"]).tolist() == [-1, -1]  # no mask: unknown


def test_shanghaitech_mask_for_a_missing_video(tmp_path: Path) -> None:
    root = make_shanghaitech(tmp_path)
    np.save(root / "testing" / "test_frame_mask" / "01_0099.npy", np.zeros(3, dtype=np.uint8))
    with pytest.raises(DatasetLayoutError, match=r"01_0099\.npy: labels for video '01_0099'"):
        shanghaitech.list_videos(root)


@pytest.mark.integration
def test_shanghaitech_real_labels(tmp_path: Path) -> None:
    """Masks at the root (`test_frame_mask/`), rebuilt from the real labels; one placeholder frame per video."""
    real = np.load(shared("shanghaitech-labels/labels_original/hf2vad_gt_label.npz"))
    touch(tmp_path / "training" / "videos", "01_001.avi")
    (tmp_path / "test_frame_mask").mkdir()
    for vid in real.files:
        frames(tmp_path / "testing" / "frames" / vid, 1)
        np.save(tmp_path / "test_frame_mask" / f"{vid}.npy", real[vid])
    test = [v for v in discover(tmp_path) if v.split == "test"]
    assert len(test) == 107
    assert sum(int(v.labels.sum()) for v in test) == 17326  # type: ignore[union-attr]
    expected = read_labels_csv(shared("shanghaitech-labels/test_labels.csv"))
    for v in test:
        np.testing.assert_array_equal(v.labels, expected[v.video_id])


# ---------------------------------------------------------------- UCF-Crime


def test_ucf_crime_layout(tmp_path: Path) -> None:
    videos = discover(make_ucf_crime(tmp_path), "auto")
    assert [(v.video_id, v.split) for v in videos] == [
        ("Normal_Videos_003_x264", "train"),  # once, though stored twice
        ("Abuse028_x264", "test"), ("Burglary005_x264", "test"), ("Normal_Videos_015_x264", "test"),
    ]  # Abuse001 (anomalous, not annotated) is skipped
    found = by_id(videos)
    assert found["Abuse028_x264"].label_ranges == ((165, 241),)
    assert int(found["Abuse028_x264"].frame_labels(300).sum()) == 76
    assert found["Burglary005_x264"].frame_labels(40).nonzero()[0].tolist() == [*range(10, 20), 30]
    assert found["Normal_Videos_015_x264"].frame_labels(5).tolist() == [0] * 5


def test_ucf_crime_listed_video_without_file(tmp_path: Path) -> None:
    root = make_ucf_crime(tmp_path, UCF_ANNOTATION + "Arson011_x264.mp4  Arson  150  420  680  1267\n")
    with pytest.raises(DatasetLayoutError, match=r"Arson011_x264\.mp4"):
        ucf_crime.list_videos(root)


@pytest.mark.parametrize(
    "bad_row",
    [
        "Arson011_x264.mp4  Arson  150  420",  # too few fields
        "Arson011_x264.mp4  Arson  150  x  -1  -1",  # not a number
        "Arson011_x264.mp4  Arson  420  150  -1  -1",  # ends before it starts
        "Normal_Videos_100_x264.mp4  Normal  5  9  -1  -1",  # a normal video with a segment
    ],
)
def test_ucf_crime_malformed_row_names_file_and_line(tmp_path: Path, bad_row: str) -> None:
    root = make_ucf_crime(tmp_path, UCF_ANNOTATION + bad_row + "\n")
    with pytest.raises(DatasetLayoutError, match=r"Temporal_Anomaly_Annotation_for_Testing_Videos\.txt:4"):
        discover(root, "ucf-crime")


def test_ucf_crime_same_name_different_videos(tmp_path: Path) -> None:
    root = make_ucf_crime(tmp_path)
    (root / "Normal_Videos_event" / "Normal_Videos_003_x264.mp4").write_bytes(b"another video")
    with pytest.raises(DatasetLayoutError, match="same name"):
        ucf_crime.list_videos(root)
