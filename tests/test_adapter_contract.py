"""The contract every dataset adapter passes: each registered adapter (`ADAPTERS`, what `--format`
chooses from) lists each video of its own layout once, under an id the id rule allows, in a stable
order; its labels cover exactly the frames of their video and leave training footage normal; a
label file that does not fit, a folder that is empty or cannot be read, and awkward file names end
in one clear `PipelineError`, never a bare traceback. New adapters join `LAYOUTS` with a replica of
their layout (a test fails until they do); what an adapter does instead by design is in `EXCEPTIONS`.

The replicas hold placeholder bytes: adapters list files and never decode them. A video file's
frame count is the one its label file was made for; a frame folder's is its number of frame files.
"""

from __future__ import annotations

import ast
import errno
import os
import pkgutil
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
import pytest
from test_adapters_labelled import (
    frames,
    make_avenue,
    make_shanghaitech,
    make_ucf_crime,
    make_ucsd_common,
    make_ucsd_official,
    save_masks,
    touch,
)
from vad.tasks.sources import datasets
from vad.tasks.sources.datasets import ADAPTERS, FORMATS, VideoSource, detect_format, discover, survey
from vad.tasks.sources.datasets._base import VIDEO_EXTENSIONS, natural_key, video_id_for

from vad.errors import DatasetLayoutError, LabelMismatchError, PipelineError

REPO = Path(__file__).resolve().parents[1]


def _rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"the replica changed: {old!r} is not in {path}"
    path.write_text(text.replace(old, new))


def _append(path: Path, text: str) -> None:
    with open(path, "a") as fh:
        fh.write(text)


@dataclass(frozen=True)
class Layout:
    """A dataset layout in miniature, what its adapter must find in it, and ways to spoil it.

    Each spoiler changes the replica at `root` and returns what the outcome must name.
    """

    name: str
    adapter: str  # its key in ADAPTERS
    build: Callable[[Path], Path]
    frames: dict[str, int]  # every video id -> its frame count
    train: frozenset[str]  # the ids of the training videos
    labels: dict[str, str]  # test id -> its labels by hand, one digit a frame; other test ids: unknown
    mislabel: Callable[[Path], tuple[str, int]]  # one video's labels now cover another count: (id, count)
    corrupt: Callable[[Path], str]  # a label file no longer parses: its name (and line)
    lock: str  # a folder the adapter must read, relative to the root
    awkward: Callable[[Path], tuple[str, str]]  # a video named with spaces and accents: (relative path, split)
    clash: Callable[[Path], str]  # ids equal to another's, or equal but for case: a name in the outcome
    awkward_outcome: str = "kept"  # or, by design (see EXCEPTIONS): "left out", "refused"
    clash_outcome: str = "refused"  # or "resolved" (distinct ids, a warning), or by design "left out"
    label_train: Callable[[Path], tuple[str, str]] | None = None  # labels for a training video: (label file, video id)


LAYOUTS: dict[str, Layout] = {}


def register(layout: Layout) -> None:
    LAYOUTS[layout.name] = layout


# ---------------------------------------------------------------- UCSD, official archive


def _ucsd_official_mislabel(root: Path) -> tuple[str, int]:
    _rewrite(root / "Test" / "UCSDped2.m", "[2:3]", "[2:9]")  # 1-based inclusive: frames 1..8 of 4
    return "Test001", 9


def _ucsd_official_corrupt(root: Path) -> str:
    _append(root / "Test" / "UCSDped2.m", "gt = oops;\n")
    return "UCSDped2.m:4"


def _ucsd_official_awkward(root: Path) -> tuple[str, str]:
    frames(root / "Train" / "Train 003 é", 3, ".tif")
    return "Train/Train 003 é", "train"


def _ucsd_official_clash(root: Path) -> str:
    frames(root / "Train" / "train001", 3, ".tif")
    return "train001"


register(Layout(
    name="ucsd-official", adapter="ucsd", build=make_ucsd_official,
    frames={"Train001": 3, "Train002": 3, "Test001": 4, "Test002": 4},
    train=frozenset({"Train001", "Train002"}),
    labels={"Test001": "0110", "Test002": "1001"},  # [2:3] and [1:1, 4:4]
    mislabel=_ucsd_official_mislabel, corrupt=_ucsd_official_corrupt, lock="Train/Train001",
    awkward=_ucsd_official_awkward, awkward_outcome="left out",
    clash=_ucsd_official_clash, clash_outcome="left out",
))


# ---------------------------------------------------------------- UCSD, common re-distribution


def _ucsd_common_mislabel(root: Path) -> tuple[str, int]:
    _rewrite(root / "test_labels.csv", "01,3,1\n", "01,3,1\n01,4,1\n")
    return "Test001", 5


def _ucsd_common_corrupt(root: Path) -> str:
    (root / "test_labels.csv").write_text("clip,frame,anomaly\n01,0,1\n")
    return "test_labels.csv"


def _ucsd_common_awkward(root: Path) -> tuple[str, str]:
    frames(root / "training" / "frames" / "03 é", 3)
    return "training/frames/03 é", "train"


def _ucsd_common_clash(root: Path) -> str:
    frames(root / "testing" / "frames" / "1", 4)  # 1 and 01 are both Test001
    return "Test001"


def _ucsd_common_label_train(root: Path) -> tuple[str, str]:
    _append(root / "test_labels.csv", "Train001,0,1\n")
    return "test_labels.csv", "Train001"


register(Layout(
    name="ucsd-common", adapter="ucsd", build=make_ucsd_common,
    frames={"Train001": 3, "Train002": 3, "Test001": 4, "Test002": 4},
    train=frozenset({"Train001", "Train002"}),
    labels={"Test001": "0011", "Test002": "1000"},
    mislabel=_ucsd_common_mislabel, corrupt=_ucsd_common_corrupt, lock="testing/frames/01",
    awkward=_ucsd_common_awkward, awkward_outcome="left out",
    clash=_ucsd_common_clash, label_train=_ucsd_common_label_train,
))


# ---------------------------------------------------------------- CUHK Avenue


def _avenue_mislabel(root: Path) -> tuple[str, int]:
    save_masks(root / "testing_label_mask" / "1_label.mat", [0] * 6)
    return "test_01", 6


def _avenue_corrupt(root: Path) -> str:
    (root / "testing_label_mask" / "2_label.mat").write_bytes(b"not a MATLAB file")
    return "2_label.mat"


def _avenue_awkward(root: Path) -> tuple[str, str]:
    touch(root / "training_videos", "03 é.avi")
    return "training_videos/03 é.avi", "train"


def _avenue_clash(root: Path) -> str:
    touch(root / "testing_videos", "1.avi")  # 1 and 01 are both test_01
    return "1.avi"


register(Layout(
    name="avenue", adapter="avenue", build=make_avenue,
    frames={"train_01": 3, "train_02": 3, "test_01": 4, "test_02": 3, "test_03": 2},
    train=frozenset({"train_01", "train_02"}),
    labels={"test_01": "0011", "test_02": "100"},  # a frame with any pixel set is anomalous
    mislabel=_avenue_mislabel, corrupt=_avenue_corrupt, lock="testing_videos",
    awkward=_avenue_awkward, awkward_outcome="refused", clash=_avenue_clash,
))


# ---------------------------------------------------------------- ShanghaiTech

MASKS = Path("testing", "test_frame_mask")


def _shanghaitech_mislabel(root: Path) -> tuple[str, int]:
    np.save(root / MASKS / "01_0014.npy", np.zeros(5, np.uint8))
    return "01_0014", 5


def _shanghaitech_corrupt(root: Path) -> str:
    (root / MASKS / "01_0014.npy").write_bytes(b"not an array")
    return "01_0014.npy"


def _shanghaitech_awkward(root: Path) -> tuple[str, str]:
    touch(root / "training" / "videos", "01_003 copie é.avi")
    return "training/videos/01_003 copie é.avi", "train"


def _shanghaitech_clash(root: Path) -> str:
    touch(root / "training" / "videos", "cam_A.avi", "cam_a.avi")
    return "cam_a"


def _shanghaitech_label_train(root: Path) -> tuple[str, str]:
    np.save(root / MASKS / "01_001.npy", np.zeros(3, np.uint8))
    return "01_001.npy", "01_001"


register(Layout(
    name="shanghaitech", adapter="shanghaitech", build=make_shanghaitech,
    frames={"01_001": 3, "01_002": 3, "01_0014": 3, "01_0015": 2},
    train=frozenset({"01_001", "01_002"}),
    labels={"01_0014": "011"},
    mislabel=_shanghaitech_mislabel, corrupt=_shanghaitech_corrupt, lock="testing/frames/01_0014",
    awkward=_shanghaitech_awkward, clash=_shanghaitech_clash, label_train=_shanghaitech_label_train,
))


# ---------------------------------------------------------------- UCF-Crime

ANNOTATION = Path("Anomaly_Detection_splits", "Temporal_Anomaly_Annotation_for_Testing_Videos.txt")


def _ucf_mislabel(root: Path) -> tuple[str, int]:
    _rewrite(root / ANNOTATION, "165  240", "165  260")  # frames 165..260 of 250
    return "Abuse028_x264", 261


def _ucf_corrupt(root: Path) -> str:
    _append(root / ANNOTATION, "Arson011_x264.mp4  Arson  1\n")
    return f"{ANNOTATION.name}:4"


def _ucf_awkward(root: Path) -> tuple[str, str]:
    touch(root / "Training-Normal-Videos-Part-1", "Normal_Videos_été 7.mp4")
    return "Training-Normal-Videos-Part-1/Normal_Videos_été 7.mp4", "train"


def _ucf_clash(root: Path) -> str:
    touch(root / "Training-Normal-Videos-Part-1", "Normal_Videos_A.mp4")
    touch(root / "Normal_Videos_event", "Normal_Videos_a.mp4")
    return "Normal_Videos_a"


def _ucf_label_train(root: Path) -> tuple[str, str]:
    _append(root / ANNOTATION, "Normal_Videos_003_x264.mp4  Normal  -1  -1  -1  -1\n")
    return ANNOTATION.name, "Normal_Videos_003_x264"


register(Layout(
    name="ucf-crime", adapter="ucf-crime", build=make_ucf_crime,
    frames={"Normal_Videos_003_x264": 3, "Abuse028_x264": 250, "Burglary005_x264": 40, "Normal_Videos_015_x264": 5},
    train=frozenset({"Normal_Videos_003_x264"}),
    labels={  # rows `165 240 -1 -1` and `10 19 30 30`: 0-based frames, the end one included
        "Abuse028_x264": "0" * 165 + "1" * 76 + "0" * 9,
        "Burglary005_x264": "0" * 10 + "1" * 10 + "0" * 10 + "1" + "0" * 9,
        "Normal_Videos_015_x264": "00000",
    },
    mislabel=_ucf_mislabel, corrupt=_ucf_corrupt, lock="Training-Normal-Videos-Part-1",
    awkward=_ucf_awkward, clash=_ucf_clash, label_train=_ucf_label_train,
))


# ---------------------------------------------------------------- generic folder


def make_folder(root: Path) -> Path:
    """Video files and frame folders, split by a `train/` folder; labels.csv names one test video
    by its id and one by its relative path."""
    touch(root / "train", "day.mp4")
    frames(root / "train" / "cam1", 3, ".png")
    touch(root / "test", "night.mp4", "notes.txt")  # notes.txt: not a video
    frames(root / "test" / "cam2", 4, ".png")
    touch(root / "test" / ".cache", "thumb.mp4")  # hidden: not a video
    rows = [f"cam2,{i},{y}" for i, y in enumerate("0110")] + [f"test/night.mp4,{i},{y}" for i, y in enumerate("00110")]
    (root / "labels.csv").write_text("video,frame,label\n" + "\n".join(rows) + "\n")
    return root


def _folder_mislabel(root: Path) -> tuple[str, int]:
    _rewrite(root / "labels.csv", "cam2,3,0\n", "cam2,3,0\ncam2,4,0\n")
    return "cam2", 5


def _folder_corrupt(root: Path) -> str:
    (root / "labels.csv").write_text("video,frame,label\ncam2,zero,1\n")
    return "labels.csv:2"


def _folder_awkward(root: Path) -> tuple[str, str]:
    touch(root / "test", "Caméra 2 (nuit).mp4")
    return "test/Caméra 2 (nuit).mp4", "test"


def _folder_clash(root: Path) -> str:
    touch(root / "test", "Cam.mp4", "cam.mp4")
    return "test/cam.mp4"


def _folder_label_train(root: Path) -> tuple[str, str]:
    _append(root / "labels.csv", "day,0,0\n")
    return "labels.csv", "day"


register(Layout(
    name="folder", adapter="folder", build=make_folder,
    frames={"day": 3, "cam1": 3, "night": 5, "cam2": 4},
    train=frozenset({"day", "cam1"}),
    labels={"cam2": "0110", "night": "00110"},
    mislabel=_folder_mislabel, corrupt=_folder_corrupt, lock="test/cam2",
    awkward=_folder_awkward, clash=_folder_clash, clash_outcome="resolved", label_train=_folder_label_train,
))

_FIXED_PATHS = "the layout fixes every path, so no relative path is kept; the store keeps the uri"

# What an adapter does instead of a contract item, by design; the tests assert the "instead".
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("ucsd-official", "names"): "videos are the TrainNNN/TestNNN folders; a folder named otherwise (the TestNNN_gt "
                                "pixel masks sit beside them) is not a video and is left out",
    ("ucsd-common", "names"): "videos are the numbered NN folders; a folder named otherwise is left out",
    ("avenue", "names"): "videos are numbered (01.avi); another name is refused, naming the file",
    ("ucsd-official", "relative"): _FIXED_PATHS,
    ("ucsd-common", "relative"): _FIXED_PATHS,
    ("avenue", "relative"): _FIXED_PATHS,
    ("shanghaitech", "relative"): _FIXED_PATHS,
    ("folder", "detect"): "the generic fallback claims every folder, so detection tries it last",
    ("ucsd-official", "clash"): "ids are the TrainNNN/TestNNN folder names, matched with their case: a train001 "
                                "folder is not a video, so two folders never make one id",
    ("ucsd-official", "label-train"): "the .m file labels the test videos by position: it cannot name a training video",
    ("avenue", "label-train"): "mask files are named by test video number: they cannot name a training video",
    ("ucf-crime", "label-train"): "the annotation file defines the test split: a video it lists is a test video",
}


def _cases() -> list[object]:
    """(adapter, layout) for every registered adapter; an adapter without a layout fails `replica`."""
    cases: list[object] = []
    for name in ADAPTERS:
        owned = [item.name for item in LAYOUTS.values() if item.adapter == name] or [None]
        cases += [pytest.param(name, item, id=item or f"{name}-without-a-layout") for item in owned]
    return cases


CONTRACT = pytest.mark.parametrize(("adapter", "layout_name"), _cases())


@pytest.fixture
def replica(adapter: str, layout_name: str | None) -> Layout:
    if layout_name is None:
        pytest.fail(f"adapter {adapter!r} is in ADAPTERS but has no Layout in {Path(__file__).name}; add one")
    return LAYOUTS[layout_name]


@pytest.fixture
def unreadable(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """Makes a folder unreadable the way a user without the right finds it: chmod 000, and listing
    it raises PermissionError for root too, whom permissions do not stop."""
    locked: set[str] = set()

    def guard(real: Callable[..., object]) -> Callable[..., object]:
        def listing(path: object = ".", *args: object, **kwargs: object) -> object:
            if isinstance(path, (str, os.PathLike)) and os.path.abspath(path) in locked:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real(path, *args, **kwargs)
        return listing

    monkeypatch.setattr(os, "listdir", guard(os.listdir))
    monkeypatch.setattr(os, "scandir", guard(os.scandir))

    def lock(folder: Path) -> None:
        folder.chmod(0)
        locked.add(os.path.abspath(folder))

    yield lock
    for folder in locked:
        Path(folder).chmod(0o755)


def by_id(videos: list[VideoSource]) -> dict[str, VideoSource]:
    return {v.video_id: v for v in videos}


def rows(videos: list[VideoSource]) -> list[tuple[object, ...]]:
    """Everything a listing says about each video, comparable with ==."""
    return [(v.video_id, v.split, v.uri, v.kind, v.frame_files, v.relative, v.label_ranges,
             None if v.labels is None else v.labels.tolist()) for v in videos]


def digits(labels: np.ndarray) -> str:
    return "".join(str(int(x)) for x in labels)


def exception(replica: Layout, item: str) -> str | None:
    return EXCEPTIONS.get((replica.name, item))


# ---------------------------------------------------------------- the registry


def test_every_adapter_module_is_registered_and_offered_wherever_a_format_is_chosen():
    modules = {m.name for m in pkgutil.iter_modules(datasets.__path__) if not m.name.startswith("_")}
    assert {m.__name__.rsplit(".", 1)[-1] for m in ADAPTERS.values()} == modules
    assert all(callable(m.detect) and callable(m.list_videos) for m in ADAPTERS.values())
    assert list(ADAPTERS)[-1] == "folder"  # the generic fallback is detected last
    assert FORMATS == ("auto", *ADAPTERS)
    # The ingest flow's typed parameter (Prefect refuses a format it does not list) and the CLI's
    # help, read from the source: importing the flows costs seconds.
    tree = ast.parse((REPO / "flows" / "ingest.py").read_text())
    literal = next(node.value for node in ast.walk(tree)
                   if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "Format" for t in node.targets))
    assert tuple(ast.literal_eval(literal.slice)) == FORMATS  # type: ignore[attr-defined]
    cli_help = re.search(r'"--format", help="([^"]*)"', (REPO / "flows" / "cli.py").read_text())
    assert cli_help is not None and cli_help.group(1) == "|".join(FORMATS)


# ---------------------------------------------------------------- discovery


@CONTRACT
def test_each_video_is_listed_once_under_a_valid_id_in_a_stable_order(adapter, replica, tmp_path):
    root = replica.build(tmp_path / "data")
    videos = discover(root, adapter)
    assert sorted(v.video_id for v in videos) == sorted(replica.frames)
    assert len({v.uri for v in videos}) == len(videos)  # one source per video, not two copies
    assert len({v.video_id.casefold() for v in videos}) == len(videos)  # distinct on any file system
    assert {v.video_id for v in videos if v.split == "train"} == replica.train
    assert {v.split for v in videos} == {"train", "test"}
    assert [v.video_id for v in videos] == [v.video_id for v in sorted(videos, key=lambda v: (v.split != "train", v.video_id))]
    for v in videos:
        assert video_id_for(v.video_id) == v.video_id  # an id is already what the id rule makes
        if v.kind == "frames":
            names = [Path(f).name for f in v.frame_files or ()]
            assert len(names) == replica.frames[v.video_id]
            assert all(Path(f).parent == Path(v.uri) and Path(f).is_file() for f in v.frame_files or ())
            assert names == sorted(names, key=natural_key) and not any(n.startswith(".") for n in names)
        else:
            assert Path(v.uri).is_file() and Path(v.uri).suffix.lower() in VIDEO_EXTENSIONS
        if exception(replica, "relative"):
            assert v.relative is None
        else:
            assert v.relative is not None and root / v.relative == Path(v.uri)
            assert v.video_id in (video_id_for(PurePath(v.relative).name), video_id_for(v.relative))
    assert rows(discover(root, adapter)) == rows(videos)
    listing = survey(root, adapter)  # what an ingest lists
    assert rows(listing.videos) == rows(videos) and not listing.failures and not listing.warnings


@CONTRACT
def test_ids_and_relative_paths_do_not_depend_on_where_the_dataset_is(adapter, replica, tmp_path):
    here = discover(replica.build(tmp_path / "a"), adapter)
    there = discover(replica.build(tmp_path / "copie d'été" / "b"), adapter)
    assert [(v.video_id, v.split, v.relative) for v in there] == [(v.video_id, v.split, v.relative) for v in here]


@CONTRACT
def test_auto_detection_picks_the_adapter_for_its_own_layout_only(adapter, replica, tmp_path):
    root = replica.build(tmp_path / "data")
    claims = {name for name, module in ADAPTERS.items() if module.detect(root)}
    assert "folder" in claims, EXCEPTIONS[("folder", "detect")]
    assert claims - {"folder"} == (set() if exception(replica, "detect") else {adapter})
    assert detect_format(root) == adapter
    assert rows(discover(root, "auto")) == rows(discover(root, adapter))


# ---------------------------------------------------------------- labels


@CONTRACT
def test_labels_cover_every_frame_and_training_footage_is_normal(adapter, replica, tmp_path):
    for v in discover(replica.build(tmp_path / "data"), adapter):
        n = replica.frames[v.video_id]
        labels = v.frame_labels(n)
        assert labels.dtype == np.int8 and labels.shape == (n,)
        if v.split == "train":  # unsupervised: training footage is normal by definition
            assert v.labels is None and v.label_ranges is None and digits(labels) == "0" * n
        elif v.video_id in replica.labels:
            assert digits(labels) == replica.labels[v.video_id]
            if v.labels is not None:
                assert v.labels.shape == (n,) and set(np.unique(v.labels).tolist()) <= {0, 1}
            assert all(0 <= start < stop <= n for start, stop in v.label_ranges or ())
        else:
            assert digits(labels) == "-1" * n  # no label file for it: unknown
    labelled = "".join(replica.labels.values())
    assert "0" in labelled and "1" in labelled  # the replica tells normal from anomalous frames


@CONTRACT
def test_labels_that_do_not_fit_their_video_are_one_clear_error(adapter, replica, tmp_path):
    root = replica.build(tmp_path / "data")
    vid, covered = replica.mislabel(root)
    video = by_id(discover(root, adapter))[vid]
    n = replica.frames[vid]
    with pytest.raises(LabelMismatchError) as err:  # at ingest, once the frames are counted
        video.frame_labels(n)
    assert (err.value.video, err.value.labels, err.value.frames) == (vid, covered, n)
    assert vid in str(err.value) and video.uri in str(err.value) and "\n" not in str(err.value)


@CONTRACT
def test_a_label_file_that_does_not_parse_is_an_error_naming_it(adapter, replica, tmp_path):
    root = replica.build(tmp_path / "data")
    name = replica.corrupt(root)
    with pytest.raises(DatasetLayoutError, match=re.escape(name)) as err:
        discover(root, adapter)
    assert "\n" not in str(err.value)


@CONTRACT
def test_labels_for_a_training_video_are_refused(adapter, replica, tmp_path):
    if replica.label_train is None:
        pytest.skip(exception(replica, "label-train"))
    root = replica.build(tmp_path / "data")
    label_file, vid = replica.label_train(root)
    if reason := exception(replica, "label-train"):
        videos = by_id(discover(root, adapter))
        assert videos[vid].split == "test", reason
        assert not any(v.labels is not None or v.label_ranges is not None for v in videos.values() if v.split == "train")
        return
    with pytest.raises(DatasetLayoutError, match=re.escape(label_file)):
        discover(root, adapter)


# ---------------------------------------------------------------- folders and names


@CONTRACT
def test_an_empty_folder_is_one_clear_error_naming_it(adapter, replica, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PipelineError) as err:
        discover(empty, adapter)
    assert str(empty) in str(err.value) and "\n" not in str(err.value)


@CONTRACT
@pytest.mark.parametrize("where", ["root", "inside"])
def test_an_unreadable_folder_is_one_clear_error_naming_it(adapter, replica, tmp_path, unreadable, where):
    root = replica.build(tmp_path / "data")
    folder = root if where == "root" else root / replica.lock
    unreadable(folder)
    with pytest.raises(PipelineError) as err:
        discover(root, adapter)
    assert f"{folder}:" in str(err.value) and "\n" not in str(err.value)


@CONTRACT
def test_a_name_with_spaces_and_accents_is_kept(adapter, replica, tmp_path):
    root = replica.build(tmp_path / "data")
    before = rows(discover(root, adapter))
    relative, split = replica.awkward(root)
    reason = exception(replica, "names")
    assert (reason is None) == (replica.awkward_outcome == "kept")
    if replica.awkward_outcome == "refused":
        with pytest.raises(DatasetLayoutError, match=re.escape(PurePath(relative).name)):
            discover(root, adapter)
        return
    videos = discover(root, adapter)
    if replica.awkward_outcome == "left out":
        assert rows(videos) == before, reason
        return
    new = [v for v in videos if v.uri == str(root / relative)]
    assert len(new) == 1 and len(videos) == len(before) + 1
    assert new[0].video_id == video_id_for(PurePath(relative).name) and new[0].split == split
    assert new[0].relative == (None if exception(replica, "relative") else relative)


@CONTRACT
def test_two_names_that_make_one_id_lose_no_video(adapter, replica, tmp_path):
    """Ids that are equal, or equal but for case (one folder on a case-insensitive file system), are
    made distinct with a warning (the generic folder) or refused; a video is never dropped."""
    root = replica.build(tmp_path / "data")
    before = rows(discover(root, adapter))
    named = replica.clash(root)
    assert (exception(replica, "clash") is None) == (replica.clash_outcome != "left out")
    if replica.clash_outcome == "refused":
        with pytest.raises(DatasetLayoutError, match=re.escape(named)):
            discover(root, adapter)
        return
    if replica.clash_outcome == "left out":
        assert rows(discover(root, adapter)) == before, exception(replica, "clash")
        return
    listing = survey(root, adapter)
    assert len(listing.videos) == len(replica.frames) + 2 and not listing.failures
    assert len({v.video_id.casefold() for v in listing.videos}) == len(listing.videos)
    assert sum(named in w for w in listing.warnings) == 1
