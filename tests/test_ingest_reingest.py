"""Ingest defects of issue 24 (and 23.7): changed labels or split, FFmpeg warnings on a playable file,
FFmpeg outliving a failed ingest, stretched archive footage, racing store creation, and the folder
layout a user is told about."""

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import TINY, ramp_frames, write_video
from vad.storage import ClipStore
from vad.storage import _clipstore
from vad.tasks.operations.archive import ingest_preprocess
from vad.tasks.sources import ffmpeg_io, ingest
from vad.tasks.sources.datasets import discover, survey
from vad.tasks.sources.datasets._base import VideoSource
from vad.tasks.sources.ffmpeg_io import ffmpeg_exe
from vad.tasks.sources.ingest import Preprocess, ingest_video

from vad.errors import DatasetLayoutError, FFmpegError, ParameterError


def _copy_dataset(tiny_dataset, dest):
    """train/normal_00.mp4, test/test_00.mp4 and a labels.csv for test_00 only."""
    (dest / "train").mkdir(parents=True)
    (dest / "test").mkdir()
    shutil.copy(tiny_dataset / "train" / "normal_00.mp4", dest / "train")
    shutil.copy(tiny_dataset / "test" / "test_00.mp4", dest / "test")
    _write_labels(dest, "test_00", range(10, 20))
    return dest


def _write_labels(root, video, anomalous):
    rows = [f"{video},{i},{int(i in anomalous)}" for i in range(TINY.frames)]
    (root / "labels.csv").write_text("video,frame,label\n" + "\n".join(rows) + "\n")


def _ingest_all(root, url):
    return {r.video_id: r for r in (ingest_video(url, v, Preprocess(), dataset="d") for v in discover(root, "folder"))}


def test_changed_labels_and_split_are_updated_in_place_without_decoding(tiny_dataset, tmp_path, monkeypatch):
    root, url = _copy_dataset(tiny_dataset, tmp_path / "data"), str(tmp_path / "s.zarr")
    assert {r.status for r in _ingest_all(root, url).values()} == {"ingested"}
    assert ClipStore.open(url).video("test_00").labels[10:20].tolist() == [1] * 10
    frames_before = ClipStore.open(url).video("test_00").read(0, TINY.frames)

    def no_decode(*args, **kwargs):
        raise AssertionError("an update of labels or split must not decode the video")

    monkeypatch.setattr(ingest, "read_frames", no_decode)
    _write_labels(root, "test_00", range(30, 35))  # edited labels.csv
    results = _ingest_all(root, url)
    assert results["test_00"].status == "updated" and "labels" in results["test_00"].note
    assert results["normal_00"].status == "skipped" and results["normal_00"].note is None
    video = ClipStore.open(url).video("test_00")
    assert np.flatnonzero(video.labels).tolist() == [30, 31, 32, 33, 34]
    assert video.attrs["anomalous_frames"] == 5 and video.attrs["complete"] is True
    assert np.array_equal(video.read(0, TINY.frames), frames_before)  # frames kept

    # A training video moved to test/: its split changes, and its labels become unknown.
    shutil.move(root / "train" / "normal_00.mp4", root / "test" / "normal_00.mp4")
    results = _ingest_all(root, url)
    assert results["normal_00"].status == "updated" and "split" in results["normal_00"].note
    moved = ClipStore.open(url).video("normal_00")
    assert moved.split == "test" and moved.labels.tolist() == [-1] * TINY.frames
    assert moved.attrs["source_relpath"] == "test/normal_00.mp4" and moved.attrs["labels_known"] is False
    assert ClipStore.open(url).video_ids(split="train") == []
    # Nothing changed since: skipped.
    assert {r.status for r in _ingest_all(root, url).values()} == {"skipped"}


def _with_stderr(monkeypatch, message):
    """FFmpeg's decode command, run by a shell that first prints `message` on stderr."""
    real = ffmpeg_io._command

    def command(*args):
        return ["sh", "-c", f'printf "%s\\n" "{message}" >&2; exec "$@"', "sh", *real(*args)]

    monkeypatch.setattr(ffmpeg_io, "_command", command)


def test_a_warning_on_a_complete_decode_is_kept_not_refused(tiny_dataset, tmp_path, monkeypatch):
    warning = "[vost#0:0/rawvideo] Application provided invalid, non monotonically increasing dts to muxer in stream 0"
    _with_stderr(monkeypatch, warning)
    url = str(tmp_path / "s.zarr")
    source = VideoSource("v", "test", str(tiny_dataset / "test" / "test_00.mp4"), "file")
    assert ingest_video(url, source, Preprocess(), dataset="d").status == "ingested"
    video = ClipStore.open(url).video("v")
    assert video.n_frames == TINY.frames and video.attrs["ffmpeg_warnings"] == [warning]


def test_a_real_file_with_a_repeated_timestamp_ingests_every_frame(tmp_path):
    """Frame 10 carries frame 9's timestamp: FFmpeg's rawvideo muxer complains, every frame decodes."""
    plain, repeated = tmp_path / "plain.mp4", tmp_path / "repeated.mp4"
    run = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y"]
    subprocess.run([*run, "-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=2", "-c:v", "libx264", "-bf", "0",
                    "-pix_fmt", "yuv420p", str(plain)], check=True)
    subprocess.run([*run, "-i", str(plain), "-c", "copy", "-bsf:v", "setts=ts='if(eq(N,10),PTS-512,PTS)'", str(repeated)],
                   check=True)  # 512 ticks of 1/12800 s: one frame at 25 fps
    url = str(tmp_path / "s.zarr")
    assert ingest_video(url, VideoSource("r", "test", str(repeated), "file"), Preprocess(), dataset="d").status == "ingested"
    video = ClipStore.open(url).video("r")
    assert video.n_frames == 50 and all("dts" in w for w in video.attrs["ffmpeg_warnings"])


def test_messages_with_frames_missing_are_still_refused(tiny_dataset, tmp_path):
    """A file cut short whose header still gives the full duration: the frames it lost count."""
    whole = tmp_path / "whole.mp4"  # the index up front, so a truncated copy still opens
    subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(tiny_dataset / "test" / "test_01.mp4"), "-c", "copy",
                    "-movflags", "+faststart", str(whole)], check=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    url = str(tmp_path / "s.zarr")
    with pytest.raises(FFmpegError, match=f"of about {TINY.frames} frames") as err:
        ingest_video(url, VideoSource("cut", "test", str(cut), "file"), Preprocess(), dataset="d")
    assert str(cut) in str(err.value) and "FFmpeg said" in str(err.value)
    assert ClipStore.open(url).status("cut") is None


def test_ffmpeg_is_gone_when_the_writer_raises(tmp_path, monkeypatch):
    path = write_video(tmp_path / "long.mp4", ramp_frames(200, 64, 64))
    procs = []
    real_spawn = ffmpeg_io._spawn

    def spawn(cmd, **kwargs):
        procs.append(real_spawn(cmd, **kwargs))
        return procs[-1]

    def full_disk(self, frames, cuts):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ffmpeg_io, "_spawn", spawn)
    monkeypatch.setattr(ingest, "batch_frames", lambda *args: 2)  # FFmpeg is far ahead of the writer
    monkeypatch.setattr(_clipstore.VideoWriter, "append", full_disk)
    with pytest.raises(OSError, match="No space"):
        ingest_video(str(tmp_path / "s.zarr"), VideoSource("v", "test", str(path), "file"), Preprocess(), dataset="d")
    decode = [p for p in procs if p.stdout is not None and "rawvideo" in p.args]
    assert decode and all(p.poll() is not None for p in decode)  # exited (and reaped) before ingest_video raised


def _checkpoint(frame_size, original_size=None):
    source = {"frame_size": frame_size, "fps": 25.0, "preprocess": {"chunk_frames": 16, "size": None}}
    if original_size is not None:
        source["original_size"] = original_size
    return SimpleNamespace(source=source)


def test_archive_footage_of_another_aspect_ratio_is_refused_not_stretched(tiny_dataset, tmp_path):
    source = VideoSource("cam", "test", str(tiny_dataset / "test" / "test_00.mp4"), "file")  # 48x64, 4:3
    url = str(tmp_path / "s.zarr")
    # Trained on 4:3 footage stored at 32x32: this 4:3 camera is scaled the same way.
    ingest_video(url, source, ingest_preprocess(_checkpoint([32, 32, 1], [120, 160])), dataset="d")
    assert ClipStore.open(url).video("cam").frames.shape[1:] == (32, 32, 1)
    # Trained on 2:1 footage: 4:3 footage would be stretched; refused, naming the video and both sizes.
    with pytest.raises(ParameterError) as err:
        ingest_video(url, source, ingest_preprocess(_checkpoint([32, 64, 1], [240, 480])), dataset="d", force=True)
    assert all(s in str(err.value) for s in ("'cam'", "48x64", "240x480", "stretch"))
    # An older checkpoint without the original size: its stored frames give the aspect ratio.
    ingest_video(url, source, ingest_preprocess(_checkpoint([24, 32, 3])), dataset="d", force=True)
    assert ClipStore.open(url).video("cam").frames.shape[1:] == (24, 32, 3)
    with pytest.raises(ParameterError, match="24x48"):
        ingest_video(url, source, ingest_preprocess(_checkpoint([24, 48, 3])), dataset="d", force=True)


def test_a_size_given_by_hand_still_resizes_freely(tiny_dataset, tmp_path):
    source = VideoSource("v", "test", str(tiny_dataset / "test" / "test_00.mp4"), "file")
    ingest_video(str(tmp_path / "s.zarr"), source, Preprocess(size=(32, 32)), dataset="d")
    assert ClipStore.open(str(tmp_path / "s.zarr")).video("v").frames.shape[1:] == (32, 32, 3)
    assert "aspect_of" not in Preprocess(size=(32, 32), aspect_of=(48, 64)).to_attrs()  # a check, not a storage setting


def test_two_creators_of_one_new_store_both_get_it(tmp_path, monkeypatch):
    """Deterministic interleaving: the other creator finishes between this one's check and its create."""
    url = str(tmp_path / "new.zarr")
    real = _clipstore._open_group
    other = []

    def open_group(u, mode, *args, **kwargs):
        if mode == "w-" and not other:
            other.append(None)
            monkeypatch.setattr(_clipstore, "_open_group", real)
            other.append(ClipStore.open_or_create(url, dataset="d"))
        return real(u, mode, *args, **kwargs)

    monkeypatch.setattr(_clipstore, "_open_group", open_group)
    store = ClipStore.open_or_create(url, dataset="d")
    assert store.dataset == "d" and other[1].dataset == "d"


def test_threads_creating_one_store_all_succeed(tmp_path):
    for round_ in range(5):
        url, barrier, errors = str(tmp_path / f"s{round_}.zarr"), threading.Barrier(4), []

        def create():
            barrier.wait()
            try:
                ClipStore.open_or_create(url, dataset="d")
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=create) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and ClipStore.open(url).dataset == "d"


def test_a_new_store_appears_whole_and_never_as_a_folder_without_metadata(tmp_path, monkeypatch):
    # the race above, made certain: a writer that opened the folder while its creator had made it but
    # not yet written its metadata found "no clip store here". The folder must appear with its metadata.
    url, seen = tmp_path / "new.zarr", []
    original = _clipstore._open_group

    def watch(path, mode, *args, **kwargs):
        if mode in ("w", "w-"):
            seen.append((Path(path) == url, url.exists()))  # metadata written at the final path? is it there yet?
        return original(path, mode, *args, **kwargs)

    monkeypatch.setattr(_clipstore, "_open_group", watch)
    ClipStore.open_or_create(str(url), dataset="d")
    assert seen == [(False, False)] and ClipStore.open(str(url)).dataset == "d"
    assert [p.name for p in tmp_path.iterdir()] == ["new.zarr"]  # nothing left beside it
    with pytest.raises(ParameterError, match="a store already exists"):
        ClipStore.create(str(url), dataset="d")
    (tmp_path / "empty.zarr").mkdir()  # an empty folder (made by hand) takes a new store, as before
    assert ClipStore.create(str(tmp_path / "empty.zarr"), dataset="e").dataset == "e"


def test_a_folder_without_train_says_what_layout_it_expects(tiny_dataset, tmp_path):
    from vad.tasks.sources.ingest import require_training_footage

    shutil.copy(tiny_dataset / "test" / "test_00.mp4", tmp_path / "a.mp4")
    shutil.copy(tiny_dataset / "test" / "test_01.mp4", tmp_path / "b.mp4")
    listing = survey(tmp_path)
    assert [v.split for v in listing.videos] == ["test", "test"]
    with pytest.raises(DatasetLayoutError) as err:
        require_training_footage(listing.videos, str(tmp_path), store_url=str(tmp_path / "none.zarr"))
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message
    assert all(s in message for s in ("train/", "test/", "labels.csv", "video,frame,label"))
    # Training footage in the listing, or already in the store: nothing to refuse.
    require_training_footage(discover(tiny_dataset, "folder"), str(tiny_dataset), store_url=str(tmp_path / "none.zarr"))


def test_a_store_path_that_is_a_file_is_one_clear_error(tmp_path):
    # a plain file where the store should go raised NotADirectoryError from deep inside the check
    url = tmp_path / "cam.zarr"
    url.write_text("not a store")
    with pytest.raises(ParameterError, match="is a file, not a folder") as err:
        ClipStore.create(str(url), dataset="d")
    assert str(url) in str(err.value) and url.read_text() == "not a store"  # left as it was


def test_a_store_creation_cut_short_leaves_nothing_behind_for_the_next(tmp_path):
    # a process killed between writing the metadata beside the store and renaming it left a hidden
    # `.NAME.new-PID-THREAD` folder for good; the next creation clears those of processes that are gone
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    stale = tmp_path / f".cam.zarr.new-{dead}-1"
    stale.mkdir()
    (stale / "zarr.json").write_text("{}")
    os.utime(stale, (1e9, 1e9))  # long ago
    young = tmp_path / f".cam.zarr.new-{dead}-2"  # a minute old at most: perhaps another machine's, kept
    young.mkdir()
    alive = tmp_path / f".cam.zarr.new-{os.getpid()}-999"  # a creation under way in a live process: kept
    alive.mkdir()
    os.utime(alive, (1e9, 1e9))
    ClipStore.create(str(tmp_path / "cam.zarr"), dataset="d")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cam.zarr", alive.name, young.name])
