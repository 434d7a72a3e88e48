"""objects' per-frame path (issue 26): a pass finds each frame's objects once per run of overlapping
clips and assembles the clips from them, with the scores `score` gives clip by clip, every variant."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import KDTree
from vad.errors import ParameterError
from vad.models import build
from vad.models.objects import Objects, _knn_mean, _luma_uint8, _p90, _to_uint8
from vad.storage import ClipStore
from vad.tasks.runtime.calibration import Calibration
from vad.tasks.runtime.checkpoint import Checkpoint, source_spec
from vad.tasks.runtime.compute import Compute
from vad.tasks.runtime.model_input import InputSpec, prepare_clips
from vad.tasks.runtime.passes import score_clips

T, STRIDE = 16, 8
SPEC = InputSpec(T, STRIDE, 32, 32, 1)
# the synthetic store is 32x32: its squares are about 3x2 px (as tests/test_objects.py's training test);
# a short autoencoder fit and a self window below a video (25 fps) keep the fit to a few seconds
MODEL = {"min_box_frac": 2 / 32, "ae_epochs": 2, "self_window_s": 1.0, "fps": 25.0, "position_min": 5}


SETTINGS = {**Objects.VARIANTS, "half-size flow": {"flow_scale": 0.5}}


@pytest.fixture(scope="module", params=list(SETTINGS))
def checkpoint(request, synthetic_store):
    """The variant (or setting) fitted on the store's normal videos (non-overlapping clips, as `vad train` streams them)."""
    store = ClipStore.open(synthetic_store)
    model = build("objects", clip_len=T, height=32, width=32, **MODEL, **SETTINGS[request.param]).eval()
    videos = list(store.videos(split="train"))
    batches = [prepare_clips(torch.from_numpy(v.read(0, 9 * T)).view(9, T, 32, 32, 1), SPEC, (0.0, 1.0)) for v in videos]
    model.fit(batches)
    rng = np.random.default_rng(0)
    dim = model.score(torch.zeros(1, 1, T, 32, 32)).embedding.shape[1]
    return Checkpoint(
        arch="objects", role="large", model_config=model.config.to_dict(), state_dict=model.state_dict(), input=SPEC,
        source=source_spec(videos[0]), dataset="synthetic", fingerprint="0" * 32,
        calibration=Calibration.fit(scores=rng.uniform(0, 0.05, 40), embeddings=rng.normal(size=(40, dim)),
                                    video_ids=["a"] * 20 + ["b"] * 20),
    )


def _tests(url):
    return ClipStore.open(url).video_ids(split="test")


@pytest.mark.parametrize("case", ["every clip", "a missing clip", "out of order"])
def test_the_pass_scores_each_clip_as_the_model_does_alone(checkpoint, synthetic_store, case):
    a, b = _tests(synthetic_store)[:2]
    index = {
        # 150 frames: 17 clips from frame 0, 5 a span (spans from frames 0, 40, 80, 120)
        "every clip": [(a, s) for s in range(0, 150 - T + 1, STRIDE)],
        # 16 missing: clips 8 and 24 only touch (one span, frame 24 starts a clip and ends none);
        # 48 to 72 missing: a new run from 80
        "a missing clip": [(a, s) for s in (0, 8, 24, 32, 40, 80, 88)],
        # another video first, then clips 4 frames apart and one before them (a run of its own)
        "out of order": [(b, 40), (a, 20), (a, 24), (a, 28), (a, 3)],
    }[case]
    got = score_clips(checkpoint, synthetic_store, index, compute=Compute(device="cpu", batch=5), workers=0)
    model, store = checkpoint.build_model(), ClipStore.open(synthetic_store)
    clips = torch.stack([torch.from_numpy(store.video(v).read(s, s + T)) for v, s in index])
    want = model.score(prepare_clips(clips, SPEC, (0.0, 1.0)))
    assert want.frames.max() > 0  # objects were found and scored
    assert got.frame_errors == pytest.approx(want.frames.numpy(), rel=1e-5, abs=1e-6)
    assert got.raw == pytest.approx(want.clip.numpy(), rel=1e-5, abs=1e-6)
    assert got.embedding == pytest.approx(want.embedding.numpy(), rel=1e-5, abs=1e-6)
    assert got.uncertainty == pytest.approx(want.uncertainty.numpy(), rel=1e-5, abs=1e-6)


def test_a_span_takes_one_flow_per_frame_and_one_per_clip_start():
    # a textured square in every frame, 3 clips of 8 frames every 4 (16 frames): frames 1-15 each take
    # the flow from the frame before, the clips' first frames (0, 4, 8) the flow from the next one:
    # 15 + 3 flows, where clip by clip takes 3 x 8
    model = build("objects", clip_len=8, height=64, width=64, min_box_frac=10 / 64, blur_frac=5 / 64, close_frac=7 / 64,
                  direction=True).eval()
    model.background.fill_(60)
    x = np.full((16, 64, 64), 60, np.uint8)
    tex = np.random.default_rng(0).integers(140, 231, size=(20, 12)).astype(np.uint8)
    for t in range(16):  # moving right 2 px a frame, 1 px taller every other frame
        x[t, 20 : 32 + t // 2, 4 + 2 * t : 16 + 2 * t] = tex[: 12 + t // 2]
    span = torch.from_numpy(x).float().div(255.0)[None, None]
    rec = model.frame_records(span, np.array([0, 4, 8]))
    assert rec.flows == 15 + 3 and len(rec.row) == 16 and len(rec.obj) == 15 + 3
    assert rec.row[rec.obj[rec.first]].tolist() == [0, 4, 8]
    # measured as a clip's first frame, a box has no box before it: no change of height or aspect
    assert np.all(rec.motion[rec.first, 3:] == 0) and np.any(rec.motion[~rec.first, 3] > 0)
    # each clip's objects, measured clip by clip, are the span's: a clip's frame 0 its first measures, the rest their inner ones
    starts = (0, 4, 8)
    alone = model._detect(np.stack([x[s : s + 8] for s in starts]), model.background.numpy(), 10.0)
    assert len(alone.frame) == 3 * 8
    measured = {(int(rec.row[o]), bool(f)): (v, m) for o, f, v, m in zip(rec.obj, rec.first, rec.velocity, rec.motion)}
    for c, f, box, v, m in zip(alone.clip, alone.frame, alone.box, alone.velocity, alone.motion):
        row = starts[c] + f
        assert np.array_equal(rec.box[rec.row == row][0], box)
        assert np.array_equal(measured[row, f == 0][0], v) and np.array_equal(measured[row, f == 0][1], m)


@pytest.mark.parametrize("channels", [1, 3])
def test_stored_frames_give_the_gray_levels_of_the_float_round_trip(channels):
    # every gray level and random colours: `_luma_uint8` is what `prepare_clips` then `_to_uint8` give
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(4, 24, 32, channels), dtype=np.uint8)
    frames.reshape(-1)[:256] = np.arange(256, dtype=np.uint8)
    spec = InputSpec(4, 4, 24, 32, 1)
    want = _to_uint8(prepare_clips(torch.from_numpy(frames)[None], spec, (0.0, 1.0)))[0]
    np.testing.assert_array_equal(_luma_uint8(frames), want)
    if channels == 3:  # the luma of pure red, green and blue, by hand: 0.299, 0.587, 0.114 of 255
        primaries = np.zeros((1, 1, 3, 3), np.uint8)
        primaries[0, 0, [0, 1, 2], [0, 1, 2]] = 255
        assert _luma_uint8(primaries).ravel().tolist() == [76, 150, 29]


def test_the_90th_percentile_of_an_object_is_numpys():
    rng = np.random.default_rng(1)
    for n in range(1, 500):  # sizes where numpy's interpolation weight falls on either side of 0.5
        values = rng.gamma(2.0, 1.5, size=n).astype(np.float32)
        assert _p90(values) == np.percentile(values, 90) and _p90(values).dtype == np.float32, n
    # 0.9 x 10 = position 9 of 0..10 exactly: the 10th smallest; 0.9 x 4 = 3.6: 3 + 0.6 x (4 - 3)
    assert _p90(np.arange(11, dtype=np.float32)[::-1].copy()) == 9.0
    assert _p90(np.array([4, 0, 2, 1, 3], np.float32)) == pytest.approx(3.6)


def test_stored_frames_are_refused_at_another_size():
    model = build("objects", clip_len=T, height=32, width=32).eval()
    with pytest.raises(ParameterError, match=r"expected stored frames \(L, 32, 32, 1 or 3\), got \(5, 16, 32, 1\)"):
        model.stored_frame_records(np.zeros((5, 16, 32, 1), np.uint8), np.array([0]))


def test_the_tree_search_gives_the_brute_force_distances():
    # by hand: from (0, 0) the 2 nearest of (0, 0), (3, 4), (6, 8) are 0 and 5 away, mean 2.5
    bank = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    tree = KDTree(bank.double().numpy())
    assert _knn_mean(torch.zeros(1, 2), bank, 2, tree).tolist() == [2.5]
    assert _knn_mean(torch.zeros(1, 2), bank, 9, tree).tolist() == pytest.approx([(0 + 5 + 10) / 3])  # k above the bank's size
    rng = np.random.default_rng(2)
    for d in (2, 5):
        bank, q = (torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32)) for n in (3000, 200))
        got = _knn_mean(q, bank, 5, KDTree(bank.double().numpy()))
        assert got.dtype == torch.float32
        assert got.numpy() == pytest.approx(_knn_mean(q, bank, 5).numpy(), rel=1e-4, abs=1e-4)


def test_a_bank_tree_follows_its_bank():
    model = build("objects", clip_len=T, height=32, width=32).eval()
    model.vel_bank = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    first = model._bank_tree("vel", model.vel_bank)
    assert model._bank_tree("vel", model.vel_bank) is first  # kept while the bank stays
    model.vel_bank.copy_(torch.tensor([[1.0, 1.0], [2.0, 2.0]]))  # written in place, as a loaded state may be
    assert model._bank_tree("vel", model.vel_bank) is not first
    assert model._distance("vel", torch.tensor([[1.0, 1.0]])).tolist() == pytest.approx([0.5 * 2**0.5 / float(model.vel_scale)])
    assert model._bank_tree("app", model.app_bank) is None  # 32 dimensions: brute force
