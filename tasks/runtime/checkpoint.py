"""Checkpoints: a model's architecture and config, weights, input spec, the store preprocessing it was
trained on, the dataset fingerprint and its calibration, in one file that `torch.load(weights_only=True)`
reads and that rebuilds its model with no other input.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from vad.models import ClipModel, make_config, model_class
from vad.models._inference import for_inference
from vad.storage import ClipStore, Video, atomic_write
from vad.tasks.runtime.calibration import Calibration
from vad.tasks.runtime.model_input import InputSpec
from vad.tasks.workspace import check_dataset_name

from vad.errors import (
    CheckpointError,
    CheckpointMismatchError,
    NotFoundError,
    ParameterError,
)

FORMAT = "video-anomaly-router/checkpoint"
VERSION = 1


def dataset_fingerprint(dataset: str, videos: list[Video]) -> str:
    """BLAKE2b over the dataset name and each video's id, source hash, frame count and preprocessing."""
    h = hashlib.blake2b(digest_size=16)
    h.update(dataset.encode())
    for v in sorted(videos, key=lambda v: v.id):
        record = [v.id, v.attrs.get("source_hash"), v.n_frames, v.attrs.get("preprocess"), v.attrs.get("frame_size")]
        h.update(json.dumps(record, sort_keys=True).encode())
    return h.hexdigest()


def source_spec(video: Video) -> dict[str, Any]:
    """The stored-frame properties a checkpoint depends on: frame size (H, W, C), frame rate, ingest options."""
    return {
        "frame_size": [int(x) for x in video.frames.shape[1:]],
        "fps": video.attrs.get("fps"),
        "preprocess": video.attrs.get("preprocess"),
        "original_size": video.attrs.get("original_size"),  # the source's (H, W): archive footage must share its aspect
    }


_BUILD_LOCK = threading.Lock()


@dataclass
class Checkpoint:
    """A loaded checkpoint; `build_model()` rebuilds the network from it alone."""

    arch: str
    role: str
    model_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    input: InputSpec
    source: dict[str, Any]
    dataset: str
    fingerprint: str
    calibration: Calibration | None  # None only while training fits it (with `vad.tasks.runtime.passes.score_clips`)
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    path: str = ""
    # what scoring built or measured for this checkpoint (models per device, batch sizes); never
    # saved or pickled
    cache: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def selection(self) -> dict[str, Any]:
        """What selection on the store's own normal footage chose at training (`training["selection"]`,
        tasks/learning/selection.py: the variant table, the fusion table, the validation set); {} when none ran."""
        return dict(self.training.get("selection") or {})

    @property
    def chosen_fusion(self) -> str:
        """The fusion rule for escalated clips chosen on validation for this (large) checkpoint; "replace" when none."""
        return str((self.selection.get("fusion") or {}).get("chosen") or "replace")

    @property
    def chosen_router(self) -> dict[str, Any] | None:
        """The router settings chosen on validation with the fusion rule for this (large) checkpoint,
        as `RouterConfig.record()` keeps them (`routing.router_from_record` builds the router); None
        when none were (an earlier checkpoint, or no small model at training)."""
        settings = (self.selection.get("fusion") or {}).get("router_settings")
        return None if settings is None else dict(settings)

    def build_model(self, device: torch.device | str = "cpu") -> ClipModel:
        """The network with the checkpoint's weights, in eval mode (deterministic scores)."""
        model = model_class(self.arch)(make_config(self.arch, self.model_config))
        model.load_state_dict(self.state_dict)
        return model.to(device).eval()

    def scoring_model(self, device: torch.device | str = "cpu", *, compile: bool = False) -> ClipModel:
        """`build_model` rewritten for fast scoring (`models/_inference.py`: same scores up to float
        rounding), with `score` compiled by `torch.compile` when asked. Built once per device and
        kept on this object, so a pass per video does not rebuild it."""
        key = ("model", str(torch.device(device)), compile)
        with _BUILD_LOCK:  # the passes of several videos may ask at once, on threads
            if key not in self.cache:
                model = for_inference(self.build_model(device))
                if compile and not model.cpu_bound:  # a CPU-bound model's OpenCV work has nothing to compile
                    # weights frozen in as constants; static shapes (run_pass pads the last batch)
                    model.score = torch.compile(model.score, options={"freezing": True}, dynamic=False)  # type: ignore[method-assign]
                self.cache[key] = model
            return self.cache[key]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["cache"] = {}
        return state

    def check_video(self, video: Video) -> None:
        """Refuse a video whose stored frames were preprocessed differently from the training store's."""
        got = source_spec(video)
        want_size, got_size = list(self.source["frame_size"]), got["frame_size"]
        name = self.path or f"{self.arch} ({self.role})"
        if got_size != want_size:
            raise CheckpointMismatchError(
                name, video.id,
                f"its frames are {_size(got_size)} but the model was trained on {_size(want_size)} frames; "
                f"ingest it with --size {want_size[0]}x{want_size[1]} {'--gray' if want_size[2] == 1 else '--rgb'}",
            )
        want_fps, got_fps = self.source.get("fps"), got["fps"]
        if want_fps and got_fps and abs(float(want_fps) - float(got_fps)) > 1e-3:
            raise CheckpointMismatchError(
                name, video.id, f"it runs at {got_fps:g} fps but the model was trained at {want_fps:g} fps; ingest it with --fps {want_fps:g}"
            )
        if video.n_frames < self.input.clip_len:
            raise CheckpointMismatchError(name, video.id, f"it has {video.n_frames} frames, fewer than one clip ({self.input.clip_len})")

    def check_store(self, store: ClipStore) -> None:
        """`check_video`'s frame size, channels and frame rate for every complete video of `store`,
        up front: a store the model cannot read is refused in one line before any video is scored."""
        for video in store.videos():
            if video.n_frames >= self.input.clip_len:  # a video too short is refused (per video) when scored
                self.check_video(video)

    def to_dict(self) -> dict[str, Any]:
        if self.calibration is None:
            raise CheckpointError(f"{self.path or self.arch}: a checkpoint is saved only once it is calibrated")
        return {
            "format": FORMAT, "version": VERSION, "arch": self.arch, "role": self.role,
            "model_config": self.model_config, "state_dict": self.state_dict, "input": self.input.to_dict(),
            "source": self.source, "dataset": self.dataset, "fingerprint": self.fingerprint,
            "calibration": self.calibration.to_state(), "training": self.training, "versions": self.versions,
        }


def _size(frame_size: list[int]) -> str:
    h, w, c = frame_size
    return f"{h}x{w} {'gray' if c == 1 else 'RGB'}"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """`torch.save` through storage's atomic write: readers never see half a checkpoint."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> Path:
    atomic_torch_save(checkpoint.to_dict(), path)
    return Path(path)


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint with `weights_only=True` (no code runs on load) and check its format."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise NotFoundError(f"checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a video-anomaly-router checkpoint")
    if raw.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {raw.get('version')}; this program reads {VERSION}")
    try:
        return Checkpoint(
            arch=raw["arch"], role=raw["role"], model_config=raw["model_config"], state_dict=raw["state_dict"],
            input=InputSpec(**raw["input"]), source=raw["source"], dataset=raw["dataset"],
            fingerprint=raw["fingerprint"], calibration=Calibration.from_state(raw["calibration"]),
            training=raw.get("training", {}), versions=raw.get("versions", {}), path=str(path),
        )
    except KeyError as exc:
        raise CheckpointError(f"checkpoint {path} lacks {exc.args[0]!r}") from exc


@functools.lru_cache(maxsize=8)
def _cached(path: str, mtime_ns: int, size: int) -> Checkpoint:
    return load_checkpoint(path)


def cached_checkpoint(path: str | Path) -> Checkpoint:
    """`load_checkpoint`, remembered per process while the file is unchanged (same mtime and size):
    tasks that each score one video then load a checkpoint once per worker, not once per video."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise NotFoundError(f"checkpoint {path} does not exist")
    st = path.stat()
    return _cached(str(path.resolve()), st.st_mtime_ns, st.st_size)


def check_pair(small: Checkpoint, large: Checkpoint | None) -> None:
    """Both models must read the same stored frames (size, channels, frame rate) and cut a video into
    the same clips, since the large one re-scores the small one's clips: refused up front, in one line."""
    if large is None:
        return
    a, b = small.input, large.input
    differ = []
    if (a.clip_len, a.stride) != (b.clip_len, b.stride):
        differ.append(f"they cut clips differently ({a.clip_len} frames every {a.stride} vs {b.clip_len} every {b.stride}; "
                      "train them with the same --clip-len and --stride)")
    size_a, size_b = list(small.source["frame_size"]), list(large.source["frame_size"])
    if size_a != size_b:
        differ.append(f"they were trained on {_size(size_a)} vs {_size(size_b)} frames")
    fps_a, fps_b = small.source.get("fps"), large.source.get("fps")
    if fps_a and fps_b and abs(float(fps_a) - float(fps_b)) > 1e-3:
        differ.append(f"they were trained at {float(fps_a):g} vs {float(fps_b):g} fps")
    if differ:
        names = f"{small.path or small.arch} and {large.path or large.arch}"
        raise ParameterError(f"the small and large checkpoints do not fit together ({names}): {'; '.join(differ)}")


def find_checkpoint(root: str, dataset: str, role: str) -> str:
    """The one `<role>-*.pt` in `<root>/checkpoints/<dataset>/`; among several, the default
    architecture's `<role>-<DEFAULT_ARCH[role]>.pt` (what `vad train --model <role>` writes); none, or
    several without that one, is an error."""
    from vad.models import DEFAULT_ARCH

    folder = Path(root) / "checkpoints" / check_dataset_name(dataset)
    found = sorted(folder.glob(f"{role}-*.pt"))
    if not found:
        raise NotFoundError(f"no {role} checkpoint in {folder}; train one with `vad train --dataset {dataset} --model {role}` or pass --{role} PATH")
    default = folder / f"{role}-{DEFAULT_ARCH.get(role)}.pt"
    if len(found) > 1 and default not in found:
        names = ", ".join(p.name for p in found)
        raise ParameterError(f"several {role} checkpoints in {folder} ({names}) and none is the default {default.name}; "
                             f"choose one with --{role} PATH")
    return str(default if len(found) > 1 else found[0])


def load_pair(root: str, dataset: str, small_path: str | None = None, large_path: str | None = None) -> tuple[Checkpoint, Checkpoint]:
    """The small and large checkpoints given, else the dataset's own under `<root>/checkpoints/`."""
    small = cached_checkpoint(small_path or find_checkpoint(root, dataset, "small"))
    large = cached_checkpoint(large_path or find_checkpoint(root, dataset, "large"))
    check_pair(small, large)
    return small, large
