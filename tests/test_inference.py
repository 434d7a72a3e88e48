"""The scoring rewrites (models/_inference.py), the compute settings of a pass (batch, precision,
compile, device) and the scoring model kept per checkpoint."""

import pickle

import numpy as np
import pytest
import torch
from conftest import make_checkpoint
from torch import nn
from vad.models import REGISTRY, make_config, model_class
from vad.models._inference import ParityConvTranspose3d, for_inference
from vad.storage import ClipStore, read_manifest
from vad.tasks.runtime.compute import Compute, measure_batch
from vad.tasks.runtime.passes import run_pass
from vad.tasks.inference.routing import BatchBudget
from vad.tasks.inference.scoring import score_dataset
from vad.tasks.runtime.model_input import clip_index

from vad.errors import ParameterError

# The stated tolerance of a bfloat16 pass (CUDA's default) against float32 (the CPU's): every raw
# clip score within 1% and every calibrated score within 0.01. Measured: 0.2% and 2e-5 here; on
# Ped2's trained vae3d-motion and predictor-wide 0.09% and 0.21%, calibrated 0.0003 and 0.0031
# (docs/operations.md).
BF16_RAW_REL, BF16_CALIBRATED = 0.01, 0.01


def test_a_single_voxel_through_the_parity_form_gives_the_kernels_centre():
    # a transposed convolution (kernel 4, stride 2, padding 1) spreads input voxel i over outputs
    # o = 2i - 1 + k; for one voxel at i = 0, outputs 0 and 1 take taps k = 1 and 2 on each axis
    conv = nn.ConvTranspose3d(1, 1, 4, stride=2, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(64.0).reshape(1, 1, 4, 4, 4))
    out = ParityConvTranspose3d(conv)(torch.ones(1, 1, 1, 1, 1))
    assert out.shape == (1, 1, 2, 2, 2)
    # tap (a, b, c) holds 16a + 4b + c: the centre is 21, 22, 25, 26, 37, 38, 41, 42
    assert out.flatten().tolist() == [21, 22, 25, 26, 37, 38, 41, 42]


@pytest.mark.parametrize("c_in,c_out,bias", [(4, 1, False), (6, 3, True), (5, 8, True)])
def test_the_parity_form_equals_the_transposed_convolution(c_in, c_out, bias):
    torch.manual_seed(0)
    conv = nn.ConvTranspose3d(c_in, c_out, 4, stride=2, padding=1, bias=bias)
    x = torch.randn(2, c_in, 3, 5, 4)
    with torch.no_grad():
        want, got = conv(x), ParityConvTranspose3d(conv)(x)
    assert got.shape == want.shape == (2, c_out, 6, 10, 8)
    assert torch.allclose(got, want, atol=1e-5)


def test_other_transposed_convolutions_are_refused():
    with pytest.raises(ValueError, match="not a kernel-4"):
        ParityConvTranspose3d(nn.ConvTranspose3d(2, 1, 3, stride=1, padding=1))


def _perturbed(arch: str) -> nn.Module:
    """A model of `arch` at 32x32 with batch-norm statistics far from the identity, in eval mode."""
    torch.manual_seed(0)
    model = model_class(arch)(make_config(arch, {"height": 32, "width": 32}))
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen) * 1.5)
            m.weight.data.copy_(0.5 + torch.rand(n, generator=gen))
            m.bias.data.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
    return model.eval()


@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_the_rewritten_model_scores_as_the_original(arch):
    model = _perturbed(arch)
    fast = for_inference(model)
    x = torch.rand(3, model.config.in_channels, model.config.clip_len, 32, 32) * 2 - 1
    a, b = model.score(x), fast.score(x)
    for field in ("clip", "frames", "embedding", "uncertainty"):
        want, got = getattr(a, field), getattr(b, field)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6), (arch, field, (got - want).abs().max())
    # the original is left as it was: its batch norms are still there (fitted models have none)
    if not model_class(arch).fitted:
        assert any(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) for m in model.modules())


def test_the_rewrite_folds_batch_norms_and_swaps_only_thin_transposed_convolutions():
    model = _perturbed("vae3d")
    fast = for_inference(model)
    bn = lambda m: sum(isinstance(x, nn.BatchNorm3d) for x in m.modules())  # noqa: E731
    # 4 encoder and 3 decoder blocks have a batch norm after their convolution; the last decoder block has none
    assert (bn(model), bn(fast)) == (7, 0)
    parity = [m for m in fast.modules() if isinstance(m, ParityConvTranspose3d)]
    assert len(parity) == 1 and parity[0].c_out == 1  # only the last layer (1 channel out); 16+ stay transposed
    assert sum(isinstance(m, nn.ConvTranspose3d) for m in fast.modules()) == 3
    assert not any(p.requires_grad for p in fast.parameters())


@pytest.fixture(scope="module")
def vae(synthetic_store, tmp_path_factory):
    return make_checkpoint(synthetic_store, "vae3d", 3, tmp_path_factory.mktemp("vae"))


def _index(store_url: str, n_videos: int = 2) -> list[tuple[str, int]]:
    store = ClipStore.open(store_url)
    return clip_index(store, store.video_ids(split="test")[:n_videos], 16, 8)


def test_the_scoring_model_is_built_once_per_device_and_not_pickled(vae):
    a, b = vae.scoring_model("cpu"), vae.scoring_model("cpu")
    assert a is b
    assert not any(isinstance(m, nn.BatchNorm3d) for m in a.modules())
    copy = pickle.loads(pickle.dumps(vae))
    assert copy.cache == {} and copy.scoring_model("cpu") is not a


def test_pass_results_do_not_depend_on_the_batch_size(synthetic_store, vae):
    index = _index(synthetic_store)  # 34 clips: batches of 5 leave a short last one
    a = run_pass(vae, synthetic_store, index, compute=Compute(batch=5), workers=0)
    b = run_pass(vae, synthetic_store, index, compute=Compute(batch=16), workers=0)
    assert a.calls == b.calls == 34
    assert np.allclose(a.raw, b.raw, rtol=1e-5) and np.allclose(a.frame_errors, b.frame_errors, rtol=1e-5)


def _within_tolerance(half, full) -> None:
    rel = np.abs(half.raw - full.raw) / np.abs(full.raw)
    assert rel.max() <= BF16_RAW_REL, rel.max()
    assert np.abs(half.calibrated - full.calibrated).max() <= BF16_CALIBRATED


def test_a_bfloat16_pass_agrees_with_float32_within_the_stated_tolerance(synthetic_store, vae):
    # what a CUDA pass computes (bfloat16 autocast), checked on the CPU against the float32 pass
    index = _index(synthetic_store)
    full = run_pass(vae, synthetic_store, index, compute=Compute(precision="float32"), workers=0)
    half = run_pass(vae, synthetic_store, index, compute=Compute(precision="bfloat16"), workers=0)
    _within_tolerance(half, full)
    assert not np.array_equal(half.raw, full.raw)  # the bfloat16 pass did run in bfloat16
    # the order of the clips, which routing uses, is kept
    assert np.corrcoef(np.argsort(np.argsort(half.raw)), np.argsort(np.argsort(full.raw)))[0, 1] > 0.98


def test_a_compiled_pass_scores_as_the_eager_one_in_one_shape(synthetic_store, vae, monkeypatch):
    # Inductor's first compile in a process builds and loads a probe library per vector instruction
    # set the CPU lists (cold, this test took 18.8 s with them and 13.9 s without, measured); taken here
    # from the CPU's flags alone
    monkeypatch.setattr("torch._inductor.config.cpp.vec_isa_ok", True)
    index = _index(synthetic_store, 1)[:14]  # batches of 8 and 6: the 6 are padded to 8
    eager = run_pass(vae, synthetic_store, index, compute=Compute(batch=8), workers=0)
    model = vae.scoring_model("cpu", compile=True)
    compiled_score, sizes = model.score, []

    def score(x):
        sizes.append(x.shape[0])
        return compiled_score(x)

    model.score = score
    try:
        compiled = run_pass(vae, synthetic_store, index, compute=Compute(batch=8, compile=True), workers=0)
    finally:
        model.score = compiled_score
    assert sizes == [8, 8]
    assert compiled.calls == 14 and compiled.frame_errors.shape == (14, 16) and compiled.batch == 8
    assert np.allclose(compiled.raw, eager.raw, rtol=1e-4) and np.allclose(compiled.ood_distance, eager.ood_distance, atol=1e-5)


def test_batch_measurement_stops_at_the_first_batch_that_runs_out_of_memory(vae, monkeypatch):
    model = vae.scoring_model("cpu")
    real = model.score

    def score(x):
        if x.shape[0] > 4:
            raise torch.OutOfMemoryError("out of memory")
        return real(x)

    monkeypatch.setattr(model, "score", score)
    clock = iter(range(1000))  # every timed stretch takes 1 "second": clips/s grows with the batch
    monkeypatch.setattr("vad.tasks.runtime.compute.time.perf_counter", lambda: float(next(clock)))
    best, rates = measure_batch(vae, torch.device("cpu"), candidates=(2, 4, 8, 16), repeats=1)
    assert rates == {2: 2.0, 4: 4.0} and best == 4


def test_batch_measurement_stops_when_a_larger_batch_is_not_faster(vae, monkeypatch):
    ticks = iter([0.0, 1.0, 10.0, 12.0, 20.0, 24.0, 30.0, 33.0])  # batches 2, 4, 8: 2, 2, 8/3 clips/s
    monkeypatch.setattr("vad.tasks.runtime.compute.time.perf_counter", lambda: next(ticks))
    best, rates = measure_batch(vae, torch.device("cpu"), candidates=(2, 4, 8), repeats=1)
    assert list(rates) == [2, 4] and best == 2  # 4 is not 5% faster than 2: 8 is never tried


@pytest.mark.parametrize("kwargs,message", [
    ({"precision": "half"}, "precision must be one of auto, float32, bfloat16"),
    ({"batch": 0}, "batch must be 1 or more"),
])
def test_bad_compute_settings_are_refused(kwargs, message):
    with pytest.raises(ParameterError, match=message):
        Compute(**kwargs)


def test_run_json_records_the_compute_settings(synthetic_store, tmp_path):
    root = tmp_path / "ws"
    (root / "stores").mkdir(parents=True)
    (root / "stores" / "synthetic.zarr").symlink_to(synthetic_store)
    folder = root / "checkpoints" / "synthetic"
    make_checkpoint(synthetic_store, "topheavy", 0, folder)
    make_checkpoint(synthetic_store, "ae3d", 1, folder, role="large")
    score_dataset(str(root), "synthetic", budget=BatchBudget(0.25), run_id="c1", compute=Compute(batch=4, precision="float32"))
    compute = read_manifest(str(root), "synthetic", "c1")["compute"]
    assert compute == {"device": "cpu", "requested_device": "auto", "batch": {"small": 4, "large": 4}, "batch_given": True,
                       "precision": "float32", "compile": False}
    # defaults, and no clip escalated: the CPU batch for the small model, none for the large one
    score_dataset(str(root), "synthetic", budget=BatchBudget(0.0), run_id="c2")
    compute = read_manifest(str(root), "synthetic", "c2")["compute"]
    assert compute["batch"] == {"small": 8, "large": None} and not compute["batch_given"] and compute["precision"] == "auto"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_pass_agrees_with_the_cpu_pass_within_the_stated_tolerance(synthetic_store, vae):
    index = _index(synthetic_store)
    cpu = run_pass(vae, synthetic_store, index, compute=Compute(device="cpu"), workers=0)
    gpu = run_pass(vae, synthetic_store, index, compute=Compute(device="cuda"), workers=0)  # bfloat16 autocast
    _within_tolerance(gpu, cpu)
    full = run_pass(vae, synthetic_store, index, compute=Compute(device="cuda", precision="float32"), workers=0)
    assert np.allclose(full.raw, cpu.raw, rtol=1e-3)


@pytest.mark.parametrize("args, message", [
    (["--precision", "half"], "precision must be one of auto, float32, bfloat16"),
    (["--batch", "0"], "batch must be 1 or more"),
    (["--device", "cuda:7"], "no CUDA device" if not torch.cuda.is_available() else "CUDA device(s)"),
    (["--device", "tpu"], "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
])
def test_cli_score_refuses_bad_compute_settings_in_one_line(args, message, tmp_path, vad_main):
    code, _, err = vad_main("score", "--dataset", "nope", *args, "--root", str(tmp_path))
    assert code == 2
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1 and "Traceback" not in err
