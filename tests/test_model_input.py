"""From stored uint8 frames to model input: channels, size, value range, and the clip dataset."""

import pickle

import numpy as np
import pytest
import torch
from vad.storage import ClipStore
from vad.tasks.runtime.model_input import (
    ClipBatches,
    ClipDataset,
    InputSpec,
    clip_index,
    plan_batches,
    prepare_clips,
    read_clips,
)

from vad.errors import ParameterError


def _frames(values, h=4, w=4, c=3):
    """(1, T, h, w, c) uint8 clips whose frame t is flat at values[t]."""
    v = np.asarray(values, np.uint8)[:, None, None, None]
    return torch.from_numpy(np.broadcast_to(v, (len(values), h, w, c)).copy())[None]


def test_value_range_and_layout():
    x = prepare_clips(_frames([0, 255], c=1), InputSpec(2, 1, 4, 4, 1), (-1.0, 1.0))
    assert x.shape == (1, 1, 2, 4, 4) and x.dtype == torch.float32
    assert x[0, 0, 0].unique().tolist() == [-1.0] and x[0, 0, 1].unique().tolist() == [1.0]
    y = prepare_clips(_frames([51], c=1), InputSpec(1, 1, 4, 4, 1), (0.0, 1.0))
    assert y.unique().item() == pytest.approx(0.2)


def test_motion_input_is_the_difference_to_the_previous_frame():
    # frames 0, 0.2, 0.2, 0.6: differences 0.2, 0, 0.4, the first frame repeating the first difference
    x = prepare_clips(_frames([0, 51, 51, 153], c=1), InputSpec(4, 1, 4, 4, 1, motion=True), (0.0, 1.0))
    assert x.shape == (1, 1, 4, 4, 4)
    assert [round(x[0, 0, t].unique().item(), 6) for t in range(4)] == [0.2, 0.2, 0.0, 0.4]
    assert InputSpec(**InputSpec(4, 1, 4, 4, 1, motion=True).to_dict()).motion  # recorded in checkpoints
    assert not InputSpec(**{"clip_len": 4, "stride": 1, "height": 4, "width": 4, "channels": 1}).motion  # older ones
    with pytest.raises(ParameterError, match="2 frames"):
        prepare_clips(_frames([0], c=1), InputSpec(1, 1, 4, 4, 1, motion=True), (0.0, 1.0))


def test_rgb_to_gray_uses_luma_and_gray_to_rgb_repeats():
    rgb = torch.zeros(1, 1, 2, 2, 3, dtype=torch.uint8)
    rgb[..., 0] = 255  # pure red: luma 0.299
    gray = prepare_clips(rgb, InputSpec(1, 1, 2, 2, 1), (0.0, 1.0))
    assert gray.unique().item() == pytest.approx(0.299)
    back = prepare_clips(_frames([102], h=2, w=2, c=1), InputSpec(1, 1, 2, 2, 3), (0.0, 1.0))
    assert back.shape == (1, 3, 1, 2, 2) and back.unique().item() == pytest.approx(0.4)
    # the same into a [-1, 1] model at the stored size (scaled in place after the channel copy)
    tanh = prepare_clips(_frames([255], h=2, w=2, c=1), InputSpec(1, 1, 2, 2, 3), (-1.0, 1.0))
    assert tanh.shape == (1, 3, 1, 2, 2) and tanh.unique().item() == 1.0


def test_shrinking_averages_areas():
    frames = torch.zeros(1, 1, 4, 4, 1, dtype=torch.uint8)
    frames[0, 0, :2, :2] = 200  # top-left 2x2 block
    out = prepare_clips(frames, InputSpec(1, 1, 2, 2, 1), (0.0, 1.0))
    assert out[0, 0, 0] * 255 == pytest.approx(torch.tensor([[200.0, 0.0], [0.0, 0.0]]))
    frames[0, 0, 0, 0] = 0  # one of the four pixels dark: the block averages to 150
    out = prepare_clips(frames, InputSpec(1, 1, 2, 2, 1), (0.0, 1.0))
    assert float(out[0, 0, 0, 0, 0]) * 255 == pytest.approx(150.0, abs=1e-3)


def test_bad_input_is_refused():
    with pytest.raises(ParameterError, match="uint8"):
        prepare_clips(torch.zeros(1, 1, 2, 2, 1), InputSpec(1, 1, 2, 2, 1), (0.0, 1.0))
    with pytest.raises(ParameterError, match="channels"):
        InputSpec(16, 8, 32, 32, 2)
    with pytest.raises(ParameterError, match="stride"):
        InputSpec(16, 0, 32, 32, 1)


def test_clip_dataset_reads_the_indexed_frames_and_pickles_without_the_store(tmp_path):
    url = str(tmp_path / "s.zarr")
    store = ClipStore.create(url, dataset="d")
    w = store.begin_video("v", height=2, width=2, channels=1, chunk_frames=4, attrs={"split": "train"})
    w.append(np.arange(10, dtype=np.uint8)[:, None, None, None].repeat(2, 1).repeat(2, 2), np.zeros(10, bool))
    w.finish(np.zeros(10, np.int8), {})
    index = clip_index(store, ["v"], clip_len=4, stride=3)
    assert index == [("v", 0), ("v", 3), ("v", 6)]  # floor((10 - 4) / 3) + 1 = 3 clips
    ds = ClipDataset(url, index, 4)
    assert ds[1][:, 0, 0, 0].tolist() == [3, 4, 5, 6]
    copy = pickle.loads(pickle.dumps(ds))  # as sent to a worker process: reopens the store lazily
    assert copy._store is None and copy[2][:, 0, 0, 0].tolist() == [6, 7, 8, 9]


def _frame_numbered_store(tmp_path, videos=(("v", 20), ("w", 12))):
    """Videos whose frame i holds the value i everywhere (2x2 gray, 4-frame chunks)."""
    url = str(tmp_path / "n.zarr")
    store = ClipStore.create(url, dataset="d")
    for vid, n in videos:
        w = store.begin_video(vid, height=2, width=2, channels=1, chunk_frames=4, attrs={"split": "test"})
        w.append(np.arange(n, dtype=np.uint8)[:, None, None, None].repeat(2, 1).repeat(2, 2), np.zeros(n, bool))
        w.finish(np.zeros(n, np.int8), {})
    return url, ClipStore.open(url)


def test_batches_keep_the_order_and_never_mix_videos():
    index = [("v", 0), ("v", 2), ("v", 4), ("w", 0), ("w", 2), ("v", 9)]
    batches = plan_batches(index, 2)
    assert [(v, s.tolist()) for v, s in batches] == [("v", [0, 2]), ("v", [4]), ("w", [0, 2]), ("v", [9])]
    with pytest.raises(ParameterError, match="batch must be 1 or more"):
        plan_batches(index, 0)


@pytest.mark.parametrize("starts, reads", [
    ([0, 2, 4, 6], 1),  # overlapping: one span of frames 0-9
    ([0, 4, 8], 1),  # touching: still one span
    ([0, 9, 14], 3),  # apart
    ([8, 0, 3], 2),  # out of order (pass 2 never asks for this, but it must still be right)
    ([5], 1),
])
def test_clips_read_as_spans_hold_the_frames_of_their_starts(tmp_path, starts, reads):
    _, store = _frame_numbered_store(tmp_path)
    video = store.video("v")
    calls = []
    read = video.read
    video.read = lambda a, b: calls.append((a, b)) or read(a, b)
    clips = read_clips(video, np.array(starts), 4)
    assert len(calls) == reads
    assert clips.shape == (len(starts), 4, 2, 2, 1)
    assert clips[:, :, 0, 0, 0].tolist() == [[s, s + 1, s + 2, s + 3] for s in starts]


def test_clip_batches_read_what_clip_by_clip_reading_reads(tmp_path):
    url, store = _frame_numbered_store(tmp_path)
    index = clip_index(store, ["v", "w"], clip_len=4, stride=2)  # 9 clips of v, 5 of w
    batches = ClipBatches(url, index, 4, batch=4)
    assert [len(s) for _, s in batches.batches] == [4, 4, 1, 4, 1]
    joined = torch.cat([batches[i] for i in range(len(batches))])
    single = ClipDataset(url, index, 4)
    assert torch.equal(joined, torch.stack([single[i] for i in range(len(index))]))
    copy = pickle.loads(pickle.dumps(batches))
    assert copy._store is None and torch.equal(copy[4], batches[4])
