"""Out-of-fold calibration of fitted models: the folds by hand, every fold scored by a fit that never
saw it, the final model fitted on all of the footage, and footage too short for folds refused."""

from __future__ import annotations

import numpy as np
import pytest
from vad.models import MotionPatch
from vad.storage import ClipStore
from vad.tasks.learning import fitting
from vad.tasks.learning.split import calibration_folds, footage_seconds, out_of_fold
from vad.tasks.learning.training import TrainConfig, plan_training, train_model
from vad.tasks.runtime.checkpoint import load_checkpoint
from vad.tasks.runtime.passes import score_clips

from vad.errors import PipelineError


def _store(tmp_path, lengths, name="cam"):
    """Gray 16x16 training videos of the given lengths; frame i of video k is flat at level (k + 1) i
    (mod 256): each video moves at its own pace."""
    store = ClipStore.create(str(tmp_path / f"{name}.zarr"), dataset=name)
    for k, n in enumerate(lengths):
        w = store.begin_video(f"v{k}", height=16, width=16, channels=1, chunk_frames=4, attrs={"split": "train", "fps": 10.0})
        levels = ((k + 1) * np.arange(n)) % 256
        w.append(np.broadcast_to(levels.astype(np.uint8)[:, None, None, None], (n, 16, 16, 1)).copy(), np.zeros(n, bool))
        w.finish(np.zeros(n, np.int8), {})
    return store


def _config(**kw):
    return TrainConfig(role="small", arch="motion_patch", clip_len=4, stride=2, window=2, batch=2, workers=0, **kw)


def test_videos_are_dealt_into_folds_and_a_lone_video_is_cut_in_time(tmp_path):
    videos = list(_store(tmp_path, [20] * 5).videos())
    folds = calibration_folds(videos, _config(calibration_folds=2))
    own = [sorted({v for v, _ in f.clips}) for f in folds]
    assert sorted(len(o) for o in own) == [2, 3] and sorted(sum(own, [])) == [f"v{k}" for k in range(5)]
    for f, mine in zip(folds, own):
        fitted = sorted(v for v, _, _ in f.fit_runs)
        assert not set(fitted) & set(mine) and sorted(fitted + mine) == [f"v{k}" for k in range(5)]
        assert len(f.clips) == len(mine) * 9  # 20 frames, clips of 4 at stride 2: (20 - 4) / 2 + 1
    assert [sorted({v for v, _ in f.clips}) for f in calibration_folds(videos, _config(calibration_folds=2))] == own  # seeded
    # one video of 100 frames in 2 folds: frames [0, 50) and [50, 100), each fitted on the other
    lone = calibration_folds(list(_store(tmp_path, [100], "one").videos()), _config(calibration_folds=2))
    assert [f.fit_runs for f in lone] == [[("v0", 50, 100)], [("v0", 0, 50)]]
    assert lone[0].clips == [("v0", s) for s in range(0, 47, 2)]  # starts 0..46: the last clip ends at frame 50
    assert lone[1].fit_index(4) == [("v0", s) for s in range(0, 48, 4)]  # 12 whole clips of frames 0..47


def test_every_calibration_clip_is_scored_by_a_fit_that_never_saw_its_video(tmp_path, monkeypatch):
    store = _store(tmp_path, [24] * 4)
    fits, scored = [], []
    real_fit, real_score = fitting._fit_state, fitting.score_clips
    monkeypatch.setattr(fitting, "_fit_state", lambda plan, config, url, index, *a, **k: fits.append(index) or real_fit(plan, config, url, index, *a, **k))
    monkeypatch.setattr(fitting, "score_clips", lambda ck, url, index, **k: scored.append(index) or real_score(ck, url, index, **k))
    result = train_model(store.url, tmp_path / "m.pt", _config(model={"statistic": "minus_q"}))
    final, *fold_fits = fits
    assert {v for v, _ in final} == {"v0", "v1", "v2", "v3"} and len(final) == 4 * 6  # all footage, 6 clips of 4 each
    assert len(fold_fits) == len(scored) == 2
    for fit_index, clips in zip(fold_fits, scored):
        assert not {v for v, _ in fit_index} & {v for v, _ in clips}
    ck = load_checkpoint(result.checkpoint)
    assert result.val_clips == ck.calibration.scores.n == 4 * 11  # every video's clips at stride 2
    assert ck.training["calibration"]["folds"] == 2 and ck.training["val_videos"] == []
    assert sorted(sum(ck.training["calibration"]["fold_videos"], [])) == ["v0", "v1", "v2", "v3"]
    # the calibration holds the fold models' scores, not the final model's own (minus_q is fitted per cell)
    own = score_clips(ck, store.url, sorted(c for s in scored for c in s)).raw
    assert not np.allclose(np.sort(own), ck.calibration.scores.sorted_values)


def test_a_lone_video_calibrates_on_all_of_its_frames_out_of_fold(tmp_path):
    result = train_model(_store(tmp_path, [100]).url, tmp_path / "m.pt", _config())
    # folds [0, 50) and [50, 100): 24 clips each at stride 2; the final fit sees 25 clips of 4
    assert result.val_clips == 48 and result.train_clips == 25


def test_footage_too_short_for_two_folds_is_refused_before_any_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(MotionPatch, "fit", lambda *a, **k: pytest.fail("fitted"))
    url = _store(tmp_path, [6]).url  # two runs of 3 frames: no clip of 4
    with pytest.raises(PipelineError, match="out-of-fold calibration needs two folds .* set calibration_folds=1"):
        plan_training(url, tmp_path / "m.pt", _config(calibration_folds=2))
    with pytest.raises(Exception, match="calibration_folds must be >= 1"):
        _config(calibration_folds=0)


def test_footage_longer_than_fold_max_s_keeps_the_held_out_split(tmp_path):
    store = _store(tmp_path, [24] * 4)  # 4 videos of 24 frames at 10 fps: 9.6 s of footage
    assert footage_seconds(list(store.videos())) == pytest.approx(9.6)
    assert out_of_fold(list(store.videos()), _config(fold_max_s=9.6))
    result = train_model(store.url, tmp_path / "m.pt", _config(fold_max_s=9.5))
    ck = load_checkpoint(result.checkpoint)
    # round(0.2 * 4) = 1 video held out: 11 clips at stride 2; the other 3 fitted (6 clips of 4 each)
    assert result.val_clips == 11 and result.train_clips == 18 and len(ck.training["val_videos"]) == 1
    assert ck.training["calibration"]["folds"] == 1 and "fold_max_s=9.5" in ck.training["calibration"]["why"]
    with pytest.raises(Exception, match="fold_max_s must be a number of seconds > 0"):
        _config(fold_max_s=0)
