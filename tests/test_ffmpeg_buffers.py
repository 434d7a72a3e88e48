"""Ingest reads FFmpeg's frames into a ring of reused batch buffers (issue 26, item 4): fresh memory
for every batch made the kernel zero a page per 4 KiB read. A reused buffer must never be refilled
while its batch is still in use, so what is stored is what a plain decode gives."""

import numpy as np
from conftest import ramp_frames, write_frames
from vad.storage import ClipStore
from vad.tasks.sources import ingest
from vad.tasks.sources.datasets._base import frames_source
from vad.tasks.sources.ffmpeg_io import BUFFER_RING, DecodeSpec, numbered_pattern, read_frames
from vad.tasks.sources.ingest import Preprocess, ingest_video

N = 25  # frames: 13 batches of 2, more than the ring holds


def _folder(tmp_path):
    folder = write_frames(tmp_path / "cam", ramp_frames(N), pattern="%03d.png")
    return folder, tuple(str(p) for p in sorted(folder.glob("*.png")))


def test_reused_buffers_cycle_through_the_ring_and_hold_the_right_frames(tmp_path):
    folder, files = _folder(tmp_path)
    assert numbered_pattern(files) is not None
    spec = DecodeSpec(32, 48, 3)
    plain = list(read_frames(str(folder), spec, batch_frames=2, frame_files=files))
    assert not any(np.shares_memory(a, b) for i, a in enumerate(plain) for b in plain[i + 1:])
    seen, bases = [], []
    with read_frames(str(folder), spec, batch_frames=2, frame_files=files, reuse_buffers=True) as batches:
        for batch in batches:
            seen.append(batch[:, 0, 0, 0].copy())  # valid until the next batch is asked for
            bases.append(batch)
    assert np.concatenate(seen).tolist() == [10 * i + 5 for i in range(N)]
    assert np.array_equal(np.concatenate(seen), np.concatenate(plain)[:, 0, 0, 0])
    # batch i and i + BUFFER_RING share a buffer; no two batches within one turn of the ring do
    assert all(np.shares_memory(bases[i], bases[i + BUFFER_RING]) for i in range(len(bases) - BUFFER_RING))
    assert not any(np.shares_memory(bases[i], bases[j]) for i in range(BUFFER_RING) for j in range(i + 1, BUFFER_RING))


def test_ingest_through_the_ring_stores_every_frame_as_decoded(tmp_path, monkeypatch):
    # Small batches so one video turns the ring several times (a 720p batch is 32 frames).
    monkeypatch.setattr(ingest, "batch_frames", lambda chunk_frames, frame_bytes: 2)
    folder, _ = _folder(tmp_path)
    url = str(tmp_path / "s.zarr")
    ingest_video(url, frames_source("cam", "test", folder), Preprocess(chunk_frames=2), dataset="d")
    video = ClipStore.open(url).video("cam")
    assert video.n_frames == N
    assert np.array_equal(video.read(0, N), ramp_frames(N))
