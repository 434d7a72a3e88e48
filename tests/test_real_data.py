"""Integration tests on the real data in ../shared (skipped with the reason when it is absent)."""

import re
import subprocess

import pytest
from conftest import shared_path
from vad.storage import ClipStore
from vad.tasks.sources.datasets import discover
from vad.tasks.sources.ffmpeg_io import ffmpeg_exe
from vad.tasks.sources.ingest import Preprocess, ingest_video

pytestmark = pytest.mark.integration


def test_ped2_ingests_completely_then_skips(tmp_path):
    ped2 = shared_path("datasets", "ped2")
    url = str(tmp_path / "ped2.zarr")
    videos = discover(ped2)
    results = [ingest_video(url, v, Preprocess(), dataset="ped2") for v in videos]
    assert {r.status for r in results} == {"ingested"}
    store = ClipStore.open(url)
    train, test = store.video_ids(split="train"), store.video_ids(split="test")
    assert (len(train), len(test)) == (16, 12)
    assert sum(store.video(v).n_frames for v in train) == 2550
    assert sum(store.video(v).n_frames for v in test) == 2010
    assert sum(int((store.video(v).labels == 1).sum()) for v in test) == 1648
    assert store.video("Test001").frames.shape[1:] == (240, 360, 3)
    again = [ingest_video(url, v, Preprocess(), dataset="ped2") for v in videos]
    assert {r.status for r in again} == {"skipped"}


def _packet_count(path) -> int:
    """Frames in the file's video stream, counted by FFmpeg copying packets (no decoding)."""
    proc = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "null", "-"],
        capture_output=True, text=True, check=True,
    )
    return int(re.findall(r"frame=\s*(\d+)", proc.stderr)[-1])


def test_real_mp4_files_ingest_with_their_true_frame_counts(tmp_path):
    folder = shared_path("videos")
    videos = discover(folder, "folder")
    assert len(videos) == 2
    url = str(tmp_path / "videos.zarr")
    for video in videos:
        result = ingest_video(url, video, Preprocess(), dataset="videos")
        stored = ClipStore.open(url).video(video.video_id)
        assert result.frames == stored.n_frames == _packet_count(video.uri) > 0
        assert stored.attrs["original_size"] == [432, 768] and stored.frames.shape[1:] == (432, 768, 3)


def test_real_footage_whose_video_starts_late_stores_exactly_its_frames(tmp_path):
    """The measured defect on real footage: an MP4 whose video starts 0.067 s after its audio (as in
    a file cut from a longer recording) came out of FFmpeg's constant-rate output with a duplicated
    frame, so a label file of the right length was refused."""
    real = shared_path("videos", "intel_car-detection_768x432_h264.mp4")
    folder = tmp_path / "cut"
    folder.mkdir()
    late = folder / "car late start.mp4"
    subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-itsoffset", "0.067", "-i", str(real), "-i", str(real),
                    "-map", "0:v:0", "-map", "1:a:0", "-c", "copy", str(late)], check=True)  # no re-encoding

    def decoded(mode: str) -> int:
        proc = subprocess.run([ffmpeg_exe(), "-nostdin", "-i", str(late), "-map", "0:v:0", "-fps_mode", mode, "-f", "null", "-"],
                              capture_output=True, text=True, check=True)
        return int(re.findall(r"frame=\s*(\d+)", proc.stderr)[-1])

    n = decoded("passthrough")
    assert n == _packet_count(late) and decoded("cfr") > n  # the file is one that a constant rate pads
    (folder / "labels.csv").write_text("video,frame,label\n" + "".join(f"car late start.mp4,{i},0\n" for i in range(n)))
    (video,) = discover(folder, "folder")
    url = str(tmp_path / "late.zarr")
    assert ingest_video(url, video, Preprocess(size=(216, 384)), dataset="late").frames == n
    stored = ClipStore.open(url).video("car-late-start")
    assert stored.n_frames == len(stored.labels) == n
    assert stored.attrs["start_time"] == pytest.approx(0.067, abs=1e-3) and stored.attrs["frame_rate_mode"] == "passthrough"
    assert stored.attrs["source_relpath"] == "car late start.mp4"
