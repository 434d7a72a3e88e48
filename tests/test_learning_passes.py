"""Refusals before and during the passes: a pair that reads different frames, a store a checkpoint
cannot read, scores that are not numbers; and the GPU turn a CPU-bound model does not take."""

from __future__ import annotations

import dataclasses
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import make_checkpoint
from vad.models import Objects
from vad.storage import ClipStore
from vad.tasks.runtime import compute
from vad.tasks.runtime.passes import first_pass
from vad.tasks.inference.scoring import score_inputs
from vad.tasks.runtime.checkpoint import check_pair, save_checkpoint

from vad.errors import CheckpointMismatchError, NonFiniteScoreError, ParameterError


@pytest.fixture(scope="module")
def pair(synthetic_store, tmp_path_factory):
    d = tmp_path_factory.mktemp("pair")
    return make_checkpoint(synthetic_store, "topheavy", 0, d), make_checkpoint(synthetic_store, "ae3d", 1, d)


def _with_source(ck, **source):
    return dataclasses.replace(ck, source={**ck.source, **source})


def test_a_pair_trained_on_other_frames_is_refused_in_one_line(pair):
    small, large = pair
    check_pair(small, large)  # the same store: fits
    for other, words in [(_with_source(large, frame_size=[64, 64, 1]), "32x32 gray vs 64x64 gray frames"),
                         (_with_source(large, frame_size=[32, 32, 3]), "32x32 gray vs 32x32 RGB frames"),
                         (_with_source(large, fps=10.0), "25 vs 10 fps")]:
        with pytest.raises(ParameterError, match=words) as err:
            check_pair(_with_source(small, fps=25.0), _with_source(other, fps=other.source["fps"] or 25.0))
        assert "\n" not in str(err.value)


def test_a_store_the_checkpoints_cannot_read_is_refused_before_scoring(synthetic_store, pair, tmp_path):
    small, large = pair
    root = tmp_path / "ws"
    shutil.copytree(synthetic_store, root / "stores" / "synthetic.zarr")
    folder = root / "checkpoints" / "synthetic"
    save_checkpoint(small, folder / "small-topheavy.pt")
    save_checkpoint(large, folder / "large-ae3d.pt")
    url, _, _ = score_inputs(str(root), "synthetic", "r1", None, None)
    assert url.endswith("synthetic.zarr")
    # a large model trained on colour frames of another size (its small partner too, so the pair fits)
    for role, ck in (("small", small), ("large", large)):
        save_checkpoint(_with_source(ck, frame_size=[48, 64, 3]), folder / f"{role}-{ck.arch}.pt")
    with pytest.raises(CheckpointMismatchError, match="its frames are 32x32 gray but the model was trained on 48x64 RGB") as err:
        score_inputs(str(root), "synthetic", "r1", None, None)
    assert "\n" not in str(err.value)


def test_nan_scores_fail_the_video_at_the_pass(synthetic_store, tmp_path):
    ck = make_checkpoint(synthetic_store, "topheavy", 0, tmp_path)
    broken = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in ck.state_dict.items()}
    ck = dataclasses.replace(ck, state_dict=broken)
    video = ClipStore.open(synthetic_store).video_ids(split="test")[0]
    # 150 frames, clips of 16 every 8: all 17 clips are NaN
    with pytest.raises(NonFiniteScoreError, match=rf"NaN or infinite scores on video '{video}' \(17 clip\(s\), the first at frame 0\)"):
        first_pass(synthetic_store, ck, video)


def test_a_cpu_bound_model_takes_no_gpu_turn_and_measures_no_batch(monkeypatch):
    # `objects` (OpenCV on the CPU) says so with the class attribute `cpu_bound = True`
    monkeypatch.setattr(Objects, "cpu_bound", True, raising=False)
    cuda = torch.device("cuda")  # a device name only: nothing runs on it
    assert compute.is_cpu_bound("objects") and not compute.is_cpu_bound("vae3d")
    assert isinstance(compute.pass_lock(cuda, False, cpu_bound=True), type(compute.pass_lock(torch.device("cpu"), False)))
    assert compute.pass_lock(cuda, False) is compute._device_lock(cuda)

    def measured(*args, **kwargs):
        raise AssertionError("a CPU-bound model's batch is not measured")

    monkeypatch.setattr(compute, "measure_batch", measured)
    assert compute.choose_batch(SimpleNamespace(arch="objects", cache={}), cuda) == compute.CPU_BATCH
