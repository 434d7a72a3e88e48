"""Session-wide fixtures: tiny synthetic videos made once, one Prefect test server, shared data."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")
# One torch thread per test process (`available_cores` reads VAD_TORCH_THREADS), on any machine and
# with or without pytest-xdist's workers. A short training's float sums depend on the thread count:
# resnet18_ae's 5-epoch clip AUC is 0.766 with one thread and 0.648 with two, so a share of the
# machine's cores would make outcomes depend on the machine. On 2 cores, two workers with two
# threads each also made a 9 s training test take 36 s. Tests of the thread setting set their own.
os.environ.setdefault("VAD_TORCH_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# torch.compile (tests/test_inference.py) compiles in a pool of worker processes by default; starting
# that pool on 2 cores cost 30 s of a 44 s test. Compiling in the test's own process gives the same code.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from vad.tasks.sources.ffmpeg_io import ffmpeg_exe  # noqa: E402
from vad.tasks.sources.synthetic import SyntheticSpec, make_synthetic  # noqa: E402

SHARED = Path(os.environ.get("VAD_SHARED", Path(__file__).resolve().parents[2] / "shared"))
TINY = SyntheticSpec(n_train=2, n_test=2, frames=40, height=48, width=64, objects=2, seed=1)


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the shared data at {path} (set VAD_SHARED to its folder)")
    return path


def write_video(path: Path, frames: np.ndarray, fps: int = 25, codec: str = "libx264") -> Path:
    """Encode (N, H, W, 3) uint8 frames to a video file with FFmpeg (for fixtures)."""
    n, h, w, _ = frames.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:", "-c:v", codec, "-pix_fmt", "yuv420p", str(path)]
    subprocess.run(cmd, input=frames.tobytes(), check=True, capture_output=True)
    return path


def write_frames(folder: Path, frames: np.ndarray, pattern: str = "%d.png") -> Path:
    """Write frames as an image sequence (default names 1.png, 2.png, ... 10.png: unpadded)."""
    n, h, w, _ = frames.shape
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-i", "pipe:", "-start_number", "1", str(folder / pattern)]
    subprocess.run(cmd, input=frames.tobytes(), check=True, capture_output=True)
    return folder


def ramp_frames(n: int, h: int = 32, w: int = 48) -> np.ndarray:
    """n flat frames whose brightness rises 10 levels a frame: frame i has value 10 * i + 5."""
    return np.broadcast_to((np.arange(n) * 10 + 5).astype(np.uint8)[:, None, None, None], (n, h, w, 3)).copy()


class Interrupted(Exception):
    """Raised from a training log callback to stop a run the way Ctrl-C would, between epochs."""


def train_until_epoch_2(store_url: str, out: Path, config) -> None:
    """Start `train_model` and interrupt it when epoch 2 reports, before that epoch's state is saved:
    `out.state` then holds epoch 1."""
    from vad.tasks.learning.training import train_model

    def stop(message: str) -> None:
        if message.startswith("epoch 2:"):
            raise Interrupted

    with pytest.raises(Interrupted):
        train_model(store_url, out, config, log=stop)


def make_checkpoint(store_url: str, arch: str, seed: int, folder: Path, clip_len: int = 16, stride: int = 8,
                    role: str | None = None):
    """An untrained model at 32x32 gray with a plausible calibration, saved as `<folder>/<role>-<arch>.pt`
    (scoring tests need a checkpoint that fits the store, not a good one)."""
    import torch
    from vad.models import build
    from vad.storage import ClipStore
    from vad.tasks.runtime.calibration import Calibration
    from vad.tasks.runtime.checkpoint import Checkpoint, save_checkpoint, source_spec
    from vad.tasks.runtime.model_input import InputSpec

    torch.manual_seed(seed)
    model = build(arch, clip_len=clip_len, height=32, width=32).eval()
    video = next(iter(ClipStore.open(store_url).videos(split="train")))
    rng = np.random.default_rng(seed)
    raw = rng.uniform(0.0, 0.05, 40)  # a plausible spread of normal clip errors
    dim = model(torch.zeros(1, 1, clip_len, 32, 32)).embedding.shape[1]
    ckpt = Checkpoint(
        arch=arch, role=role or model.role, model_config=model.config.to_dict(), state_dict=model.state_dict(),
        input=InputSpec(clip_len, stride, 32, 32, 1), source=source_spec(video), dataset="synthetic", fingerprint="0" * 32,
        calibration=Calibration.fit(scores=raw, embeddings=rng.normal(size=(40, dim)), video_ids=["a"] * 20 + ["b"] * 20,
                                    frame_scores=rng.uniform(0.0, 0.08, (40, clip_len))),
    )
    path = save_checkpoint(ckpt, Path(folder) / f"{ckpt.role}-{arch}.pt")
    ckpt.path = str(path)
    return ckpt


@pytest.fixture
def vad_main(capsys):
    """`vad ARGS` run in this process through the console entry point's own `main`, for the
    refusals and usage errors that end before anything starts: (exit code, stdout, stderr). It spares
    each case a new interpreter importing torch (4 s); the installed script itself is run as a
    subprocess by tests/test_cli.py. Whatever the command changes in the environment is undone."""
    from vad.flows.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        saved = dict(os.environ)
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:  # only what changed, so other threads never see an empty environment
            for key in set(os.environ) - set(saved):
                del os.environ[key]
            for key, value in saved.items():
                if os.environ.get(key) != value:
                    os.environ[key] = value
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 train + 2 test synthetic videos of 40 frames at 48x64, with labels.csv."""
    root = tmp_path_factory.mktemp("tiny") / "synthetic"
    make_synthetic(root, TINY)
    return root


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect API for the whole session (starting one costs 10-20 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def prefect_api_env(prefect_server) -> dict[str, str]:
    """The environment for a `vad` subprocess that talks to the session's Prefect API instead of
    starting a temporary server of its own (10-25 s on 2 cores); the tests of the temporary server
    itself (tests/test_cli_signals.py, tests/test_video_ids.py) leave PREFECT_API_URL unset."""
    from vad.tasks.operations.runners import current_api_url

    return {**os.environ, "PREFECT_API_URL": current_api_url(), "TQDM_DISABLE": "1", "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Integration tests first, in their order: with `--dist worksteal` each worker starts on its
    half from the front and the idle one steals from the back, so the last minute is short unit
    tests, not a 60 s flow started when the other worker has already finished."""
    items.sort(key=lambda item: item.get_closest_marker("integration") is None)


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The default synthetic dataset (6 normal + 6 test videos of 150 frames) stored at 32x32 gray."""
    from vad.tasks.sources.datasets import discover
    from vad.tasks.sources.ingest import Preprocess, ingest_video

    base = tmp_path_factory.mktemp("synthetic32")
    make_synthetic(base / "data", SyntheticSpec())
    url = str(base / "synthetic.zarr")
    for source in discover(str(base / "data"), "folder"):
        ingest_video(url, source, Preprocess(size=(32, 32), gray=True), dataset="synthetic")
    return url


@pytest.fixture(scope="session")
def camera_workspace(synthetic_store, tiny_dataset, tmp_path_factory):
    """A workspace with a small and a large checkpoint for dataset 'cam', and an archive of 3 dated videos."""
    root = tmp_path_factory.mktemp("ws")
    folder = root / "checkpoints" / "cam"
    small = make_checkpoint(synthetic_store, "topheavy", 0, folder)
    large = make_checkpoint(synthetic_store, "ae3d", 1, folder, role="large")
    archive = tmp_path_factory.mktemp("archive")
    sources = sorted(tiny_dataset.rglob("*.mp4"))
    for i, src in enumerate(sources[:3]):
        dest = archive / f"2026-11-{20 + i}" / f"cam-{i}.mp4"
        dest.parent.mkdir(parents=True)
        shutil.copy(src, dest)
    from vad.tasks.inference.routing import BatchBudget
    from vad.tasks.inference.scoring import ScoreSettings
    from vad.tasks.operations.archive import ArchiveSettings

    settings = ArchiveSettings(small.path, large.path, ScoreSettings(BatchBudget(0.25)))
    return str(root), str(archive), settings
