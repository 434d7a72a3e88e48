"""Ingest stores exactly the frames the source holds (issue 17, item 1).

Each fixture is a file that FFmpeg's default constant-frame-rate output would pad with duplicated
frames: a video stream that starts after its container, a stream with a gap in its timestamps, an
AVI whose audio starts before its video.
"""

import re
import subprocess

import numpy as np
import pytest
from vad.storage import ClipStore
from vad.tasks.sources.datasets import discover
from vad.tasks.sources.ffmpeg_io import ffmpeg_exe
from vad.tasks.sources.ingest import Preprocess, frame_times, ingest_video

FPS = 25
SRC = ["-f", "lavfi", "-i", f"testsrc2=size=64x64:rate={FPS}:duration=2"]
SILENCE = ["-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "2"]
MEDIA = {
    # The video stream starts at 0.08 s, the audio (and so the file) at 0: like the real MP4 cut
    # from a longer recording whose video starts at 0.067 s.
    "late-start.mp4": ["-itsoffset", "0.08", *SRC, *SILENCE, "-c:v", "libx264", "-c:a", "aac"],
    # 25 frames, a 0.32 s gap, 25 more frames.
    "gap.mkv": [*SRC, "-vf", f"setpts='N/{FPS}/TB+if(gte(N,25),0.28/TB,0)'", "-c:v", "libx264"],
    # MPEG-4 video that starts 0.1 s after its PCM audio.
    "audio.avi": ["-itsoffset", "0.1", *SRC, *SILENCE, "-c:v", "mpeg4", "-c:a", "pcm_s16le"],
}


def _count(path, *mode: str) -> int:
    """Frames FFmpeg decodes from the file's first video stream (frame= of its final stats line)."""
    proc = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-i", str(path), "-map", "0:v:0", *mode, "-f", "null", "-"],
        capture_output=True, text=True, check=True,
    )
    return int(re.findall(r"frame=\s*(\d+)", proc.stderr)[-1])


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """The three files, with labels.csv giving each the length FFmpeg's passthrough mode decodes."""
    root = tmp_path_factory.mktemp("exact")
    counts = {}
    for name, args in MEDIA.items():
        path = root / name
        subprocess.run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", *args, "-pix_fmt", "yuv420p", str(path)],
                       check=True, capture_output=True)
        counts[path.stem] = _count(path, "-fps_mode", "passthrough")
    with open(root / "labels.csv", "w") as fh:
        fh.write("video,frame,label\n")
        for video, n in counts.items():
            fh.writelines(f"{video},{i},{int(10 <= i < 20)}\n" for i in range(n))
    return root, counts


def test_fixtures_are_ones_a_constant_frame_rate_would_pad(media):
    root, counts = media
    for name in MEDIA:
        assert _count(root / name, "-fps_mode", "cfr") > counts[name.rsplit(".", 1)[0]], name


def test_every_decoded_frame_is_stored_once_and_the_labels_fit(media, tmp_path):
    root, counts = media
    url = str(tmp_path / "s.zarr")
    videos = discover(root, "folder")
    assert sorted(v.video_id for v in videos) == sorted(counts)
    for source in videos:
        result = ingest_video(url, source, Preprocess(), dataset="d")
        video = ClipStore.open(url).video(source.video_id)
        assert result.frames == video.n_frames == counts[source.video_id], source.video_id
        assert video.labels.tolist() == [int(10 <= i < 20) for i in range(counts[source.video_id])]
        assert video.attrs["frame_rate_mode"] == "passthrough" and video.attrs["resampled_fps"] is None
        assert video.attrs["source_fps"] == FPS


def test_source_timestamps_are_recorded(media, tmp_path):
    root, counts = media
    url = str(tmp_path / "s.zarr")
    by_id = {v.video_id: v for v in discover(root, "folder")}
    for vid in by_id:
        ingest_video(url, by_id[vid], Preprocess(), dataset="d")
    store = ClipStore.open(url)

    late = store.video("late-start").attrs
    assert late["start_time"] == pytest.approx(0.08, abs=1e-3)
    times = frame_times(late)
    assert len(times) == counts["late-start"]
    np.testing.assert_allclose(np.diff(times), 1 / FPS, atol=1e-4)

    gap = frame_times(store.video("gap").attrs)
    assert len(gap) == 50 and gap[0] == pytest.approx(0.0)
    steps = np.round(np.diff(gap), 3)
    assert np.flatnonzero(steps != 0.04).tolist() == [24]  # frame 25 comes 0.32 s after frame 24
    assert steps[24] == pytest.approx(0.32)

    avi = frame_times(store.video("audio").attrs)  # the video starts with a gap, where the audio plays alone
    assert len(avi) == counts["audio"] and (np.diff(avi) > 0).all() and np.diff(avi).max() > 1.5 / FPS


def test_a_requested_frame_rate_resamples_and_says_so(media, tmp_path):
    root, _ = media
    source = next(v for v in discover(root, "folder") if v.video_id == "gap")
    source = type(source)(source.video_id, "train", source.uri, "file")  # unlabelled: resampling is allowed
    url = str(tmp_path / "s.zarr")
    ingest_video(url, source, Preprocess(fps=10), dataset="d")
    video = ClipStore.open(url).video("gap")
    assert video.attrs["frame_rate_mode"] == "resampled" and video.attrs["resampled_fps"] == 10
    assert video.attrs["fps"] == 10 and video.attrs["source_fps"] == FPS
    assert video.n_frames == pytest.approx(23, abs=1)  # 2.28 s of source at 10 frames/s
    np.testing.assert_allclose(np.diff(frame_times(video.attrs)), 0.1, atol=1e-6)


def test_a_group_ingested_before_the_frame_rate_mode_is_redone(media, tmp_path):
    """Groups written by the constant-rate ingest may hold padded frames: they are not 'unchanged'."""
    import zarr

    root, counts = media
    source = next(v for v in discover(root, "folder") if v.video_id == "late-start")
    url = str(tmp_path / "s.zarr")
    ingest_video(url, source, Preprocess(), dataset="d")
    assert ingest_video(url, source, Preprocess(), dataset="d").status == "skipped"
    group = zarr.open_group(url, mode="r+")["late-start"]
    group.attrs["vad"] = {k: v for k, v in group.attrs["vad"].items() if k != "frame_rate_mode"}  # as an older ingest wrote it
    again = ingest_video(url, source, Preprocess(), dataset="d")
    assert (again.status, again.frames) == ("ingested", counts["late-start"])
