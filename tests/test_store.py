import numpy as np
import pytest
from vad.storage import ClipStore

from vad.errors import IncompleteVideoError, ParameterError, StoreNotFoundError


def _write(store, video_id, n=5, split="train", finish=True):
    w = store.begin_video(video_id, height=2, width=3, channels=3, chunk_frames=2, attrs={"split": split})
    w.append(np.full((n, 2, 3, 3), 7, np.uint8), np.zeros(n, bool))
    if finish:
        w.finish(np.zeros(n, np.int8), {"extra": 1})
    return w


def test_opening_a_missing_store_is_an_error_and_creates_nothing(tmp_path):
    with pytest.raises(StoreNotFoundError) as err:
        ClipStore.open(str(tmp_path / "nope.zarr"))
    assert isinstance(err.value, FileNotFoundError)
    assert "nope.zarr" in str(err.value)
    assert not (tmp_path / "nope.zarr").exists()


def test_missing_video_is_an_error_naming_it(tmp_path):
    store = ClipStore.create(str(tmp_path / "s.zarr"), dataset="d")
    with pytest.raises(StoreNotFoundError, match="'ghost'"):
        store.video("ghost")
    assert store.video_ids() == []


def test_unfinished_video_is_refused_and_hidden(tmp_path):
    store = ClipStore.create(str(tmp_path / "s.zarr"), dataset="d")
    _write(store, "done")
    _write(store, "half", finish=False)
    assert store.video_ids() == ["done"]
    assert store.video_ids(include_incomplete=True) == ["done", "half"]
    with pytest.raises(IncompleteVideoError):
        store.video("half")


def test_complete_is_written_last_with_frame_count(tmp_path):
    store = ClipStore.create(str(tmp_path / "s.zarr"), dataset="d")
    _write(store, "v", n=5)
    video = ClipStore.open(str(tmp_path / "s.zarr")).video("v")
    assert video.attrs["complete"] is True and video.attrs["frame_count"] == 5 and video.attrs["extra"] == 1
    assert video.frames.shape == (5, 2, 3, 3) and video.frames.chunks == (2, 2, 3, 3)
    assert video.labels.dtype == np.int8 and video.scene_cut.dtype == bool


def test_create_refuses_to_overwrite_and_dataset_names_must_agree(tmp_path):
    url = str(tmp_path / "s.zarr")
    ClipStore.create(url, dataset="a")
    with pytest.raises(ParameterError):
        ClipStore.create(url, dataset="a")
    with pytest.raises(ParameterError, match="'a'"):
        ClipStore.open_or_create(url, dataset="b")
    assert ClipStore.open_or_create(url, dataset="a").dataset == "a"


def test_splits_are_listed_separately(tmp_path):
    store = ClipStore.create(str(tmp_path / "s.zarr"), dataset="d")
    _write(store, "t1", split="train")
    _write(store, "x1", split="test")
    assert store.video_ids(split="train") == ["t1"]
    assert [v.id for v in store.videos(split="test")] == ["x1"]


def test_fsspec_urls_work_like_paths():
    url = "memory://vad-test/store.zarr"
    store = ClipStore.create(url, dataset="d", overwrite=True)
    _write(store, "v", n=3)
    assert ClipStore.open(url).video("v").read(0, 3)[..., 0].max() == 7
    with pytest.raises(StoreNotFoundError):
        ClipStore.open("memory://vad-test/other.zarr")


def test_atomic_folder_replaces_a_folder_whole_and_recovers_what_a_crash_left(tmp_path):
    from vad.storage import atomic_folder

    target = tmp_path / "rep"
    with atomic_folder(target, purpose="test") as tmp:
        (tmp / "a.txt").write_text("1")
        assert not target.exists()  # nothing in place until the block ends
    assert [p.name for p in target.iterdir()] == ["a.txt"]

    with pytest.raises(RuntimeError), atomic_folder(target, purpose="test") as tmp:
        (tmp / "b.txt").write_text("half")
        raise RuntimeError("the build failed")
    assert [p.name for p in target.iterdir()] == ["a.txt"] and [p.name for p in tmp_path.iterdir()] == ["rep"]

    # a builder killed between its two renames left the old folder aside and a temporary one
    target.rename(tmp_path / ".rep.old")
    (tmp_path / ".rep.x1y2.tmp").mkdir()
    with atomic_folder(target, purpose="test") as tmp:
        assert (target / "a.txt").read_text() == "1"  # put back before the new build starts
        (tmp / "c.txt").write_text("3")
    assert [p.name for p in target.iterdir()] == ["c.txt"] and [p.name for p in tmp_path.iterdir()] == ["rep"]


def test_atomic_folder_leaves_the_temporary_folders_of_other_names_alone(tmp_path):
    from vad.storage import atomic_folder

    other = tmp_path / ".v1.1.ab12cd34.tmp"  # being built now, as folder "v1.1"
    other.mkdir()
    (tmp_path / ".v1.zz99yy88.tmp").mkdir()  # left by a dead builder of "v1"
    with atomic_folder(tmp_path / "v1", purpose="test") as tmp:
        (tmp / "a.txt").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".v1.1.ab12cd34.tmp", "v1"]
