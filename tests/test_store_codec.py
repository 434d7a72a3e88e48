"""The frames codec is recorded per array (issue 26, item 4): the default for RGB frames moved from
zstd level 1 to level -3 for ingest speed (gray stays at 1), and stores written before read as
before, next to videos written since."""

import numpy as np
from conftest import ramp_frames, write_frames
from vad.storage import ClipStore
from vad.storage import _clipstore as clipstore
from vad.tasks.sources.datasets._base import frames_source
from vad.tasks.sources.ingest import Preprocess, ingest_video
from zarr.codecs import ZstdCodec


def _zstd_level(video) -> int:
    (codec,) = video.frames.metadata.codecs[1:]  # after the bytes codec
    return codec.level


def test_rgb_frames_are_stored_at_zstd_level_minus_3_and_gray_at_level_1(tmp_path):
    folder = write_frames(tmp_path / "cam", ramp_frames(4))
    for gray, level in ((False, -3), (True, 1)):
        url = str(tmp_path / f"{gray}.zarr")
        ingest_video(url, frames_source("cam", "test", folder), Preprocess(gray=gray), dataset="d")
        assert _zstd_level(ClipStore.open(url).video("cam")) == level


def test_a_store_written_with_the_old_codec_reads_and_takes_new_videos(tmp_path, monkeypatch):
    frames = ramp_frames(20)
    old, new = (frames_source(name, "test", write_frames(tmp_path / name, frames)) for name in ("old", "new"))
    url = str(tmp_path / "s.zarr")
    with monkeypatch.context() as patch:
        patch.setattr(clipstore, "FRAMES_CODEC", ZstdCodec(level=1))  # the default before
        ingest_video(url, old, Preprocess(), dataset="d")
    assert ingest_video(url, old, Preprocess(), dataset="d").status == "skipped"  # not redone for the codec
    ingest_video(url, new, Preprocess(), dataset="d")
    store = ClipStore.open(url)
    assert [_zstd_level(store.video(v)) for v in ("old", "new")] == [1, -3]
    for video_id in ("old", "new"):
        assert np.array_equal(store.video(video_id).read(0, 20), frames)
