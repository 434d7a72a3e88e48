import numpy as np
import pytest
from vad.storage import ClipStore, clip_count, clip_windows

from vad.errors import ParameterError


@pytest.mark.parametrize(
    ("n", "length", "stride", "expected"),
    [(10, 4, 2, 4), (10, 4, 1, 7), (10, 4, 4, 2), (16, 16, 4, 1), (15, 16, 1, 0), (0, 1, 1, 0), (180, 16, 8, 21)],
)
def test_clip_count_is_floor_n_minus_t_over_s_plus_one(n, length, stride, expected):
    assert clip_count(n, length, stride) == expected
    assert len(list(clip_windows(n, length, stride))) == expected


def test_windows_are_half_open_and_strided():
    assert list(clip_windows(10, 4, 3)) == [(0, 4), (3, 7), (6, 10)]


@pytest.mark.parametrize(("length", "stride"), [(0, 1), (4, 0), (-1, 2)])
def test_bad_clip_parameters_are_rejected(length, stride):
    with pytest.raises(ParameterError):
        clip_count(10, length, stride)


def _store_with_video(path, n=10):
    store = ClipStore.create(str(path), dataset="d")
    frames = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 6, 1), np.uint8)
    writer = store.begin_video("v", height=4, width=6, channels=1, chunk_frames=4, attrs={"split": "test"})
    cuts = np.zeros(n, bool)
    cuts[5] = True
    writer.append(frames, cuts)
    writer.finish(np.array([0] * 6 + [1] * (n - 6), np.int8), {})
    return store


def test_clips_read_their_own_frames(tmp_path):
    video = _store_with_video(tmp_path / "s.zarr").video("v")
    clips = list(video.clips(length=4, stride=3))
    assert [(c.index, c.start, c.stop) for c in clips] == [(0, 0, 4), (1, 3, 7), (2, 6, 10)]
    second = clips[1].read()
    assert second.shape == (4, 4, 6, 1)
    assert second[:, 0, 0, 0].tolist() == [3, 4, 5, 6]
    assert clips[1].labels.tolist() == [0, 0, 0, 1]
    # The cut at frame 5 lies inside clip 1 (frames 3-6), not in clip 0 (0-3) or clip 2 (6-9).
    assert [c.scene_cut for c in clips] == [False, True, False]
