import shutil

import numpy as np
import pytest
from conftest import TINY, ramp_frames, write_frames
from vad.storage import ClipStore
from vad.tasks.sources.datasets._base import VideoSource, frames_source
from vad.tasks.sources.ffmpeg_io import numbered_pattern
from vad.tasks.sources.ingest import (
    Preprocess,
    batch_frames,
    ingest_video,
    parse_size,
    scene_cut_flags,
)

from vad.errors import FFmpegError, LabelMismatchError, ParameterError


def _video(path, video_id="v", split="test", **labels):
    return VideoSource(video_id, split, str(path), "file", **labels)


def test_synthetic_video_ingests_with_its_labels_and_attributes(tiny_dataset, tmp_path):
    url = str(tmp_path / "s.zarr")
    labels = np.zeros(TINY.frames, np.int8)
    labels[10:20] = 1
    result = ingest_video(url, _video(tiny_dataset / "test" / "test_00.mp4", labels=labels), Preprocess(), dataset="d")
    assert (result.status, result.frames) == ("ingested", TINY.frames)
    video = ClipStore.open(url).video("v")
    assert video.frames.shape == (TINY.frames, TINY.height, TINY.width, 3)
    assert video.labels.tolist() == labels.tolist()
    attrs = video.attrs
    assert attrs["original_size"] == [TINY.height, TINY.width]
    assert attrs["source_fps"] == TINY.fps and attrs["split"] == "test"
    assert attrs["preprocess"] == Preprocess().to_attrs() and len(attrs["source_hash"]) == 32
    assert attrs["complete"] is True and attrs["anomalous_frames"] == 10


def test_resize_gray_and_frame_rate(tiny_dataset, tmp_path):
    url = str(tmp_path / "s.zarr")
    prep = Preprocess(size=(24, 32), gray=True, fps=TINY.fps / 2)
    ingest_video(url, _video(tiny_dataset / "train" / "normal_00.mp4", split="train"), prep, dataset="d")
    video = ClipStore.open(url).video("v")
    assert video.frames.shape == (TINY.frames // 2, 24, 32, 1)
    assert video.labels.tolist() == [0] * (TINY.frames // 2)  # training footage is normal


def test_frame_rate_change_is_refused_for_labelled_videos(tiny_dataset, tmp_path):
    source = _video(tiny_dataset / "test" / "test_00.mp4", labels=np.zeros(TINY.frames, np.int8))
    with pytest.raises(ParameterError, match="misalign"):
        ingest_video(str(tmp_path / "s.zarr"), source, Preprocess(fps=5), dataset="d")


def test_unchanged_source_is_skipped_and_changes_are_redone(tiny_dataset, tmp_path):
    url = str(tmp_path / "s.zarr")
    path = tmp_path / "clip.mp4"
    shutil.copy(tiny_dataset / "train" / "normal_00.mp4", path)
    source = _video(path)
    assert ingest_video(url, source, Preprocess(), dataset="d").status == "ingested"
    assert ingest_video(url, source, Preprocess(), dataset="d").status == "skipped"
    # Other preprocessing: redone.
    assert ingest_video(url, source, Preprocess(gray=True), dataset="d").status == "ingested"
    # Changed content at the same path: redone, and the store holds the new video.
    shutil.copy(tiny_dataset / "train" / "normal_01.mp4", path)
    assert ingest_video(url, source, Preprocess(gray=True), dataset="d").status == "ingested"
    # An unfinished group (a crashed ingest) is redone, not skipped.
    store = ClipStore.open(url, writable=True)
    crashed = store.begin_video("v", height=2, width=2, channels=1, chunk_frames=1, attrs={"split": "test"})
    crashed.lock.release()  # what the writer's death does to its lock (tests/test_concurrency.py kills one for real)
    assert ingest_video(url, source, Preprocess(gray=True), dataset="d").status == "ingested"
    assert ClipStore.open(url).video("v").n_frames == TINY.frames


def _assert_fails_cleanly(url, source, error, *needles):
    with pytest.raises(error) as err:
        ingest_video(url, source, Preprocess(), dataset="d")
    for needle in needles:
        assert needle in str(err.value)
    assert ClipStore.open(url).status(source.video_id) is None  # nothing half-written is left


def test_truncated_video_is_a_clear_error(tiny_dataset, tmp_path):
    data = (tiny_dataset / "test" / "test_01.mp4").read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: len(data) // 2])
    _assert_fails_cleanly(str(tmp_path / "s.zarr"), _video(path), FFmpegError, str(path), "FFmpeg said")


def test_empty_file_is_a_clear_error(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    ClipStore.create(str(tmp_path / "s.zarr"), dataset="d")
    _assert_fails_cleanly(str(tmp_path / "s.zarr"), _video(path), FFmpegError, str(path), "empty")


def test_non_video_file_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.avi"
    path.write_text("these are not frames\n" * 100)
    ClipStore.create(str(tmp_path / "s.zarr"), dataset="d")
    _assert_fails_cleanly(str(tmp_path / "s.zarr"), _video(path), FFmpegError, str(path), "Invalid data")


def test_labels_of_the_wrong_length_name_the_video_and_both_counts(tiny_dataset, tmp_path):
    source = _video(tiny_dataset / "test" / "test_00.mp4", video_id="cam3", labels=np.zeros(TINY.frames - 1, np.int8))
    err = LabelMismatchError
    _assert_fails_cleanly(str(tmp_path / "s.zarr"), source, err, "'cam3'", f"{TINY.frames - 1} frames", f"has {TINY.frames}")


def test_label_ranges_beyond_the_video_are_a_mismatch(tiny_dataset, tmp_path):
    source = _video(tiny_dataset / "test" / "test_00.mp4", label_ranges=((30, TINY.frames + 5),))
    _assert_fails_cleanly(str(tmp_path / "s.zarr"), source, LabelMismatchError, str(TINY.frames + 5))


def test_frame_folder_is_read_in_natural_order(tmp_path):
    folder = write_frames(tmp_path / "cam", ramp_frames(12))  # 1.png ... 12.png: '10' sorts before '2' as text
    url = str(tmp_path / "s.zarr")
    ingest_video(url, frames_source("cam", "test", folder), Preprocess(), dataset="d")
    video = ClipStore.open(url).video("cam")
    assert video.read(0, 12)[:, 0, 0, 0].tolist() == [10 * i + 5 for i in range(12)]
    assert video.attrs["source_kind"] == "frames" and video.attrs["source_fps"] is None


def test_numbered_pattern_only_for_contiguous_equal_width_names():
    assert numbered_pattern(("/d/000.jpg", "/d/001.jpg", "/d/002.jpg")) == ("/d/%03d.jpg", 0)
    assert numbered_pattern(("/d/img_0007.png", "/d/img_0008.png")) == ("/d/img_%04d.png", 7)
    assert numbered_pattern(("/d/000.jpg", "/d/002.jpg")) is None  # gap
    assert numbered_pattern(("/d/9.png", "/d/10.png")) is None  # width changes
    assert numbered_pattern(("/d/a.png",)) is None


def test_scene_cut_marks_the_first_frame_of_a_new_scene(tmp_path):
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 60, size=(1, 32, 48, 3)).repeat(10, axis=0)
    bright = rng.integers(150, 255, size=(1, 32, 48, 3)).repeat(8, axis=0)
    frames = np.concatenate([dark, bright]).astype(np.uint8)
    flags, _ = scene_cut_flags(frames, None)
    assert np.flatnonzero(flags).tolist() == [10]
    # Split across two batches, the histogram carried over gives the same flags.
    first, hist = scene_cut_flags(frames[:10], None)
    second, _ = scene_cut_flags(frames[10:], hist)
    assert np.concatenate([first, second]).tolist() == flags.tolist()
    # And through a real ingest of the same frames.
    url = str(tmp_path / "s.zarr")
    ingest_video(url, frames_source("cut", "test", write_frames(tmp_path / "cut", frames)), Preprocess(), dataset="d")
    assert np.flatnonzero(ClipStore.open(url).video("cut").scene_cut).tolist() == [10]


def test_scene_cut_histogram_samples_a_grid_sized_to_the_frame():
    # About HIST_PIXELS pixels per channel: every 4th at 240x360 (60 x 90 = 5,400), every 9th at 480x852
    # (54 x 95 = 5,130), so a larger frame costs no more.
    for (h, w), per_channel in (((240, 360), 60 * 90), ((480, 852), 54 * 95)):
        frames = np.zeros((3, h, w, 3), dtype=np.uint8)
        frames[2] = 200
        flags, hist = scene_cut_flags(frames, None)
        assert flags.tolist() == [False, False, True]
        assert hist.reshape(3, 32).sum(axis=1).tolist() == [per_channel] * 3
        assert hist.reshape(3, 32)[:, 200 >> 3].tolist() == [per_channel] * 3


def test_scene_cut_histograms_count_the_grids_pixels_per_channel():
    # The batched histogram against one np.histogram per frame and channel over the same grid
    # (every `step`-th row and column: step 2 at 120x180, 4 at 240x360), colour and gray
    rng = np.random.default_rng(3)
    for shape, step in (((5, 120, 180, 3), 2), ((4, 240, 360, 3), 4), ((3, 240, 360, 1), 4)):
        frames = rng.integers(0, 256, size=shape, dtype=np.uint8)
        _, last = scene_cut_flags(frames, None)
        grid = frames[-1, ::step, ::step, :]
        want = np.concatenate([np.histogram(grid[..., c], bins=32, range=(0, 256))[0] for c in range(shape[3])])
        assert last.tolist() == want.tolist()


def test_parameters_are_validated():
    assert parse_size("240x360") == (240, 360)
    for bad in ("240", "ax3", "240x"):
        with pytest.raises(ParameterError):
            parse_size(bad)
    with pytest.raises(ParameterError):
        Preprocess(size=(241, 360))
    with pytest.raises(ParameterError):
        Preprocess(fps=0)
    assert Preprocess().output_size(1080, 1920) == (480, 852)  # 1920 * 480 / 1080 = 853.3, made even
    assert Preprocess().output_size(240, 360) == (240, 360)
    assert batch_frames(16, 240 * 360 * 3) == 16 * 8  # eight 4.1 MB chunks fit in 32 MiB
    assert batch_frames(16, 1080 * 1920 * 3) == 32  # never less than two chunks


def test_the_store_line_says_when_frame_images_carry_no_frame_rate(tmp_path):
    # a folder of frame images (Ped2's layout) has no rate of its own: say so, not "0 fps"
    from vad.flows.pipeline import _store_text

    url = str(tmp_path / "s.zarr")
    frames = np.zeros((20, 32, 48, 1), dtype=np.uint8)
    ingest_video(url, frames_source("v", "train", write_frames(tmp_path / "v", frames)), Preprocess(gray=True), dataset="d")
    text = _store_text(url)
    assert "1 videos (1 train, 0 test)" in text and "frames at 32x48 gray" in text
    assert text.endswith("gray, no frame rate of their own (frame images)")
