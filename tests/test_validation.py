"""The validation-set maker: held-out normal footage with synthetic anomalies, in the folder layout.

The stores are built here: 6 normal videos of 60 frames at 48x64 and 10 fps, two bright 8x8 squares
walking along two lanes (one each way, 1 px/frame) over a fixed textured background with a little
noise; a store of one long video (the common case of a new camera) and one of too little footage.
"""

import csv
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from vad.storage import ClipStore
from vad.tasks.evaluation.validation import (
    GENERATOR_VERSION,
    KINDS,
    RECORD_NAME,
    ValidationSet,
    ingest_validation_set,
    make_validation_set,
)
from vad.tasks.sources.datasets import discover
from vad.tasks.sources.luma import luma

from vad.errors import ParameterError

N, H, W = 60, 48, 64
FPS = 10.0
SIDE = 8
LANES = (12, 30)  # top rows of the two lanes the squares walk along


def _video(rng: np.random.Generator, background: np.ndarray, channels: int, n: int = N) -> np.ndarray:
    frames = np.repeat(background[None], n, axis=0)
    starts = rng.integers(-20, 20, size=2)
    for t in range(n):
        for lane, start, way in zip(LANES, starts, (1, -1), strict=True):
            walked = t % (W + 40)  # a long video: the squares come back
            x = int(start + walked) if way == 1 else int(W - SIDE - start - walked)
            frames[t, lane : lane + SIDE, max(0, x) : max(0, x + SIDE)] = 210.0
    frames += rng.normal(0, 2.0, frames.shape)
    frames = np.clip(frames, 0, 255).astype(np.uint8)
    return np.repeat(frames[..., None], channels, axis=-1) if channels == 3 else frames[..., None]


def _make_store(path: Path, channels: int, lengths: tuple[int, ...] = (N,) * 6) -> str:
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:H, 0:W]
    background = 70.0 + 20.0 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
    store = ClipStore.create(str(path), dataset="tiny")
    for i, n in enumerate(lengths):
        frames = _video(rng, background, channels, n)
        if channels == 3:  # a colour tint, so the channels differ
            frames[..., 2] = (frames[..., 2] * 0.8).astype(np.uint8)
        w = store.begin_video(f"v{i:02d}", height=H, width=W, channels=channels, chunk_frames=16,
                              attrs={"split": "train", "fps": FPS})
        w.append(frames, np.zeros(n, bool))
        w.finish(np.zeros(n, np.int8), {})
    w = store.begin_video("t00", height=H, width=W, channels=channels, chunk_frames=16, attrs={"split": "test"})
    w.append(_video(rng, background, channels), np.zeros(N, bool))  # a test video: never used
    w.finish(np.full(N, -1, np.int8), {})
    return str(path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[int, str]:
    root = tmp_path_factory.mktemp("validation-stores")
    out: dict = {c: _make_store(root / f"tiny{c}.zarr", c) for c in (1, 3)}
    out["long"] = _make_store(root / "long.zarr", 3, (600,))  # one 60 s recording
    out["short"] = _make_store(root / "short.zarr", 1, (150, 140))  # 29 s in all
    return out


def _read_png(path: Path, channels: int) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return image[..., None] if channels == 1 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _read_folder(folder: Path, channels: int) -> np.ndarray:
    return np.stack([_read_png(p, channels) for p in sorted(folder.glob("*.png"))])


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_same_seed_gives_identical_files_and_another_seed_differs(stores, tmp_path):
    a = make_validation_set(stores[1], tmp_path / "a", seed=0)
    make_validation_set(stores[1], tmp_path / "b", seed=0)
    c = make_validation_set(stores[1], tmp_path / "c", seed=1)
    first = _digest(tmp_path / "a")
    assert first == _digest(tmp_path / "b")
    assert len(first) > 6 * N and RECORD_NAME in first and "labels.csv" in first
    other = _digest(tmp_path / "c")
    assert other != first
    assert (c.held_out, [v.anomaly for v in c.videos]) != (a.held_out, [v.anomaly for v in a.videos])


def _check_videos(record: ValidationSet, out: Path, store: ClipStore, channels: int) -> None:
    """Labels mark exactly the recorded frames; the other frames are their source frames, byte for byte."""
    with open(out / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for video in record.videos:
        frames = _read_folder(out / "test" / video.video_id, channels)
        assert frames.shape[1:] == (H, W, channels)
        index = video.source_index()
        source = store.video(video.source)
        source = source.read(0, source.n_frames)
        labels = np.array([int(r["label"]) for r in rows if r["video"] == video.video_id])
        assert len(frames) == len(labels) == video.frames == len(index)
        a = video.anomaly
        assert np.flatnonzero(labels).tolist() == list(range(a.start, a.stop))
        assert 8 <= a.stop - a.start <= 40  # 2-4 s at 10 fps
        assert a.start >= 6 and a.stop <= video.frames - 6  # normal frames before and after
        steps = np.diff(index, prepend=index[0] - 1)
        for j in range(video.frames):
            same = np.array_equal(frames[j], source[index[j]])
            if not labels[j]:
                assert same and steps[j] == 1, (video.video_id, j)  # lossless, in order
            elif a.kind == "frame_speed":
                assert same and steps[j] == a.params["factor"], (video.video_id, j)  # frames skipped
            else:
                assert not same, (video.video_id, j)
        if a.kind in ("local_speed", "reverse", "freeze", "paste"):  # only the window changes
            x, y, side = a.params["to_window" if a.kind == "paste" else "window"]
            inside = np.zeros((H, W), bool)
            inside[y : y + side, x : x + side] = True
            changed = (frames[a.start : a.stop] != source[index[a.start : a.stop]]).any(axis=(0, 3))
            assert changed.any() and not (changed & ~inside).any(), video.video_id


@pytest.mark.parametrize("channels", [1, 3])
def test_labels_mark_exactly_the_recorded_frames_and_only_those_frames_differ(stores, tmp_path, channels):
    out = tmp_path / "val"
    record = make_validation_set(stores[channels], out, held_out=3, per_video=2, seed=0)
    store = ClipStore.open(stores[channels])
    assert record.generator_version == GENERATOR_VERSION == 2 and record.mode == "videos"
    assert set(record.held_out) | set(record.fit_videos) == {f"v{i:02d}" for i in range(6)}  # "t00" is not normal
    assert len(record.held_out) == 3 and not set(record.held_out) & set(record.fit_videos)
    # 3 held-out videos x 2: the kinds cycle, so each comes once
    assert sorted(v.anomaly.kind for v in record.videos) == sorted(KINDS)
    assert record.frame_size == (H, W, channels) and record.fps == FPS
    _check_videos(record, out, store, channels)
    for vid in record.fit_videos:  # the fit part is the normal videos, unchanged
        assert np.array_equal(_read_folder(out / "train" / vid, channels), store.video(vid).read(0, N))


def test_colour_stays_colour(stores, tmp_path):
    record = make_validation_set(stores[3], tmp_path / "val", held_out=2, per_video=1, seed=2)
    for video in record.videos:
        frames = _read_folder(tmp_path / "val" / "test" / video.video_id, 3)
        assert frames.shape[-1] == 3 and not np.array_equal(frames[..., 0], frames[..., 2])  # the tint is kept


def test_a_scaled_up_region_is_larger_than_a_walking_square(stores, tmp_path):
    record = make_validation_set(stores[1], tmp_path / "val", held_out=3, per_video=2, seed=0)
    video = next(v for v in record.videos if v.anomaly.kind == "scale_up")
    a = video.anomaly
    assert 1.5 <= a.params["scale"] <= 2.0
    frames = _read_folder(tmp_path / "val" / "test" / video.video_id, 1)[..., 0]
    tallest = 0
    for j in range(a.start, a.stop):
        bright = (frames[j] > 150).any(axis=1)  # rows with a square: 210 on a background of 50-90
        runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], bright.astype(int), [0]]))))[::2]
        tallest = max(tallest, int(runs.max()) if len(runs) else 0)
    assert tallest >= 1.4 * SIDE  # a square drawn larger than the normal 8 px


def test_one_long_video_is_cut_into_segments_from_its_end(stores, tmp_path):
    out = tmp_path / "val"
    record = make_validation_set(stores["long"], out, held_out=2, per_video=2, seed=0)
    assert record.mode == "segments" and record.held_out == ("v00",) and record.fit_videos == ("v00",)
    assert record.held_out_frames == (("v00", 400, 500), ("v00", 500, 600))  # 10 s segments at 10 fps
    assert record.fit_frames == (("v00", 0, 400),)
    assert len(record.videos) == 4 and all(v.video_id.startswith(("v00-f400-", "v00-f500-")) for v in record.videos)
    for video in record.videos:
        first = 400 if video.video_id.startswith("v00-f400-") else 500
        index = video.source_index()
        assert index[0] == first and index[-1] == first + 99
    store = ClipStore.open(stores["long"])
    _check_videos(record, out, store, 3)
    assert np.array_equal(_read_folder(out / "train" / "v00", 3), store.video("v00").read(0, 400))
    # by default a quarter of the footage: one segment of the 60 s
    assert make_validation_set(stores["long"], tmp_path / "auto", per_video=1).held_out_frames == (("v00", 500, 600),)


def test_too_little_normal_footage_is_one_clear_error(stores, tmp_path):
    with pytest.raises(ParameterError, match=r"29\.0 s of normal footage .* at least 30 s"):
        make_validation_set(stores["short"], tmp_path / "val")
    with pytest.raises(ParameterError, match="held_out=3: .* gives 2 segments"):
        make_validation_set(stores["long"], tmp_path / "val", held_out=3)  # 30 s held out would leave 30 to fit on
    assert list(tmp_path.iterdir()) == []


def test_the_folder_adapter_and_ingest_read_it_back_exactly(stores, tmp_path):
    out = tmp_path / "val"
    record = make_validation_set(stores[3], out, held_out=["v01", "v04"], per_video=1, seed=0)
    assert record.held_out == ("v01", "v04") and record.fit_videos == ("v00", "v02", "v03", "v05")
    assert ValidationSet.load(out) == record
    videos = discover(out, "folder")
    assert [v.video_id for v in videos if v.split == "train"] == list(record.fit_videos)
    assert [v.video_id for v in videos if v.split == "test"] == sorted(v.video_id for v in record.videos)
    by_id = {v.video_id: v for v in record.videos}
    for source in videos:
        n = len(source.frame_files)
        expected = by_id[source.video_id].labels().tolist() if source.split == "test" else [0] * n
        assert source.frame_labels(n).tolist() == expected
    # through FFmpeg into a store, as `vad ingest` would: the same pixels, the same labels, and the
    # source's frame rate (a frame folder has none)
    url = str(tmp_path / "val.zarr")
    assert sorted(ingest_validation_set(out, url)) == sorted(v.video_id for v in videos)
    store = ClipStore.open(url)
    assert store.dataset == "tiny-val"
    for source in videos:
        stored = store.video(source.video_id)
        assert stored.attrs["fps"] == FPS and stored.split == source.split
        assert np.array_equal(stored.read(0, stored.n_frames), _read_folder(Path(source.uri), 3))
        if source.split == "test":
            assert stored.labels.tolist() == by_id[source.video_id].labels().tolist()


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"held_out": 6}, "held_out=6"),
    ({"held_out": 0}, "held_out=0"),
    ({"held_out": ["v01", "nope"]}, "'nope'"),
    ({"held_out": ["t00"]}, "'t00'"),  # a test video is not normal footage
    ({"held_out": "v01"}, "a count or a list"),
    ({"held_out": [f"v{i:02d}" for i in range(6)]}, "all 6"),
    ({"per_video": 0}, "per_video"),
    ({"seed": -1}, "seed"),
])
def test_bad_parameters_are_refused_with_one_parameter_error(stores, tmp_path, kwargs, words):
    with pytest.raises(ParameterError, match=words):
        make_validation_set(stores[1], tmp_path / "val", **kwargs)
    assert list(tmp_path.iterdir()) == []  # nothing written, no partial folder left


def test_an_out_dir_that_is_not_empty_is_refused_and_left_alone(stores, tmp_path):
    out = tmp_path / "val"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ParameterError, match="not an empty folder"):
        make_validation_set(stores[1], out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert make_validation_set(stores[1], empty, held_out=1, per_video=1).held_out  # an empty folder is fine


def test_luma_is_bt601_and_opencvs_rgb2gray_byte_for_byte():
    pure = np.zeros((1, 3, 3), np.uint8)
    pure[0, [0, 1, 2], [0, 1, 2]] = 255  # red, green, blue
    assert luma(pure).tolist() == [[76, 150, 29]]  # 0.299, 0.587, 0.114 x 255, rounded
    levels = np.arange(256, dtype=np.uint8)
    assert np.array_equal(luma(np.repeat(levels[:, None], 3, axis=-1)), levels)  # gray stays gray
    rgb = np.random.default_rng(0).integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
    assert np.array_equal(luma(rgb), np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in rgb]))
    assert luma(rgb[..., :1]).shape == (4, 48, 64)  # one channel: as stored
