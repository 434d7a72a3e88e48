"""From stored frames to model input: the clip index, a `Dataset` over the Zarr store, and the
conversion of uint8 frames into the float clips a model takes.

Workers read and decompress clips as uint8 (a quarter of the bytes of float32 between processes and
onto a GPU); conversion, channel mapping and resizing happen in one step on the compute device.
"""

from __future__ import annotations

from collections.abc import Iterator

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from vad.storage import ClipStore, clip_windows
from vad.tasks.runtime.memory import release_freed_memory
from vad.tasks.runtime.optical_flow import flow_clips
from vad.tasks.sources.luma import LUMA as _LUMA  # ITU-R BT.601, as FFmpeg's gray conversion

from vad.errors import ParameterError


@dataclass(frozen=True)
class InputSpec:
    """What a model sees: clips of `clip_len` frames every `stride` frames, at height x width x channels.

    `motion`: the model sees the absolute difference of each frame to the one before (the clip's
    first frame repeats the second's difference) instead of the frames: moving things, not the
    static scene.

    `flow`: the model sees the dense optical flow from each frame's predecessor, found on the frames'
    luma (`tasks/runtime/optical_flow.py`), as 3 channels (x and y components, speed); `channels` is then 3.
    """

    clip_len: int
    stride: int
    height: int
    width: int
    channels: int
    motion: bool = False
    flow: bool = False

    def __post_init__(self) -> None:
        for name in ("clip_len", "stride", "height", "width", "channels"):
            value = getattr(self, name)
            if int(value) < 1:
                raise ParameterError(f"{name} must be >= 1, got {value}")
        if self.channels not in (1, 3):
            raise ParameterError(f"channels must be 1 or 3, got {self.channels}")
        if self.flow and self.motion:
            raise ParameterError("choose one model input: frame differences (motion) or optical flow, not both")
        if self.flow and self.channels != 3:
            raise ParameterError(f"optical-flow input has 3 channels (x, y, speed), got channels={self.channels}")

    def to_dict(self) -> dict[str, int | bool]:
        return asdict(self)


def _to_float(frames: torch.Tensor, luma: bool) -> torch.Tensor:
    """uint8 (..., C) -> float32 (..., C) in [0, 1], or (..., 1) luma when `luma` (C = 3), channels
    last as stored. On a CPU numpy does it: its uint8 to float32 conversion runs several times
    faster than torch's (measured 0.06 vs 0.46 ms per 240x360 gray frame), and the luma is one
    matrix-vector product over the channels, the scaling folded into its weights."""
    if frames.device.type == "cpu":
        x = frames.numpy().astype(np.float32, order="C")
        if luma:
            return torch.from_numpy((x @ (np.asarray(_LUMA, dtype=np.float32) / np.float32(255.0)))[..., None])
        return torch.from_numpy(np.divide(x, 255.0, out=x))
    x = frames.float().div_(255.0)
    return x @ torch.tensor(_LUMA, device=x.device)[:, None] if luma else x


def prepare_clips(
    frames: torch.Tensor, spec: InputSpec, value_range: tuple[float, float], *, device: torch.device | str | None = None,
) -> torch.Tensor:
    """uint8 clips (B, T, H, W, C) -> float32 (B, C, T, h, w) in `value_range`, on `device`.

    Gray models take the luma of RGB frames; RGB models take gray frames repeated. Shrinking uses
    area averaging (what FFmpeg's `area` scaler does at ingest), enlarging trilinear interpolation.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 5:
        raise ParameterError(f"expected uint8 clips (B, T, H, W, C), got {tuple(frames.shape)} {frames.dtype}")
    x = frames.to(device, non_blocking=True) if device is not None else frames
    c = x.shape[-1]
    if spec.flow and c not in (1, 3):  # flow is found on the luma; the 3 model channels are the flow's
        raise ParameterError(f"cannot find optical flow on {c}-channel frames")
    x = _to_float(x, luma=c == 3 and (spec.flow or spec.channels == 1)).permute(0, 4, 1, 2, 3)  # (B, C, T, H, W)
    c = x.shape[1]
    if spec.flow or spec.channels == c:
        pass
    elif spec.channels == 3 and c == 1:
        x = x.repeat(1, 3, 1, 1, 1)  # a copy: the scaling below writes in place
    elif spec.channels != c:
        raise ParameterError(f"cannot map {c}-channel frames to {spec.channels} channels")
    h, w = x.shape[-2:]
    if (h, w) != (spec.height, spec.width):
        size = (x.shape[2], spec.height, spec.width)
        shrink = spec.height <= h and spec.width <= w
        x = F.interpolate(x, size=size, mode="area") if shrink else F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    if spec.flow:
        x = flow_clips(x)
    elif spec.motion:
        if x.shape[2] < 2:
            raise ParameterError("motion input needs clips of at least 2 frames")
        d = (x[:, :, 1:] - x[:, :, :-1]).abs_()
        x = torch.cat([d[:, :, :1], d], dim=2)
    lo, hi = value_range
    return x.mul_(hi - lo).add_(lo).contiguous() if (lo, hi) != (0.0, 1.0) else x.contiguous()


def clip_index(store: ClipStore, video_ids: list[str], clip_len: int, stride: int) -> list[tuple[str, int]]:
    """(video id, start frame) of every clip of the videos, in stream order."""
    index: list[tuple[str, int]] = []
    for vid in video_ids:
        index.extend((vid, start) for start, _ in clip_windows(store.video(vid).n_frames, clip_len, stride))
    return index


class _StoreReader(torch.utils.data.Dataset):
    """A dataset over a store's videos that opens the store lazily in each process, so it pickles
    cheaply to DataLoader workers."""

    def __init__(self, store_url: str, clip_len: int, storage_options: dict[str, Any] | None) -> None:
        self.store_url, self.clip_len, self.storage_options = store_url, clip_len, storage_options
        self._videos: dict[str, Any] = {}
        self._store: ClipStore | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_videos"], state["_store"] = {}, None
        return state

    def _video(self, vid: str) -> Any:
        if self._store is None:
            self._store = ClipStore.open(self.store_url, storage_options=self.storage_options)
        video = self._videos.get(vid)
        if video is None:
            video = self._videos[vid] = self._store.video(vid)
        return video


class ClipDataset(_StoreReader):
    """Clips of a store by (video id, start frame), read as uint8 (T, H, W, C) tensors.

    The store opens lazily in each process, so the dataset pickles cheaply to DataLoader workers.
    Every 64 clips read, freed heap memory goes back to the system (`release_freed_memory`), in
    whichever process reads: a DataLoader worker decodes chunk after chunk as the main process
    scores, and its heap fragments the same way.
    """

    def __init__(self, store_url: str, index: list[tuple[str, int]], clip_len: int, *, storage_options: dict[str, Any] | None = None) -> None:
        super().__init__(store_url, clip_len, storage_options)
        self.index = list(index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> torch.Tensor:
        vid, start = self.index[i]
        clip = torch.from_numpy(np.ascontiguousarray(self._video(vid).read(start, start + self.clip_len)))
        release_freed_memory(every=64)
        return clip


def plan_batches(index: list[tuple[str, int]], batch: int) -> list[tuple[str, np.ndarray]]:
    """`index` cut into batches of at most `batch` clips of one video each, in order: (video, starts)."""
    if batch < 1:
        raise ParameterError(f"batch must be 1 or more, got {batch}")
    out: list[tuple[str, np.ndarray]] = []
    i = 0
    while i < len(index):
        vid = index[i][0]
        j = i
        while j < len(index) and j - i < batch and index[j][0] == vid:
            j += 1
        out.append((vid, np.array([s for _, s in index[i:j]], dtype=np.int64)))
        i = j
    return out


def clip_runs(starts: np.ndarray, clip_len: int) -> Iterator[tuple[int, int]]:
    """[i, j) index ranges of the runs of clips that overlap or touch: each next start ascending and at
    most `clip_len` after the previous one. Each run is read from the store as one span."""
    i = 0
    while i < len(starts):
        j = i + 1
        while j < len(starts) and starts[j - 1] <= starts[j] <= starts[j - 1] + clip_len:
            j += 1
        yield i, j
        i = j


def read_clips(video: Any, starts: np.ndarray, clip_len: int) -> np.ndarray:
    """Clips of one stored video at `starts` as uint8 (B, T, H, W, C), each run of clips that
    overlap or touch (next start at most `clip_len` after the previous, ascending) read as one span.

    At stride 8 and 16-frame clips in 16-frame chunks, reading clip by clip decompresses every frame
    about four times (each clip spans two chunks, and each frame is in two clips); a span is
    decompressed once.
    """
    h, w, c = video.frames.shape[1:]
    out = np.empty((len(starts), clip_len, h, w, c), dtype=np.uint8)
    for i, j in clip_runs(starts, clip_len):
        lo = int(starts[i])
        span = video.read(lo, int(starts[j - 1]) + clip_len)
        for k in range(i, j):
            out[k] = span[starts[k] - lo : starts[k] - lo + clip_len]
    return out


def read_spans(video: Any, starts: np.ndarray, clip_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The frames of the clips of one stored video at `starts` without repeats: uint8 (L, H, W, C),
    the runs of clips that overlap or touch (as `read_clips` finds them) one after another, and (B,)
    each clip's first row in them. Clip k is `frames[offsets[k] : offsets[k] + clip_len]`."""
    parts, offsets, rows = [], np.empty(len(starts), dtype=np.int64), 0
    for i, j in clip_runs(starts, clip_len):
        lo = int(starts[i])
        parts.append(video.read(lo, int(starts[j - 1]) + clip_len))
        offsets[i:j] = rows + starts[i:j] - lo
        rows += len(parts[-1])
    return (parts[0] if len(parts) == 1 else np.concatenate(parts)), offsets


class ClipBatches(_StoreReader):
    """Batches of clips (`plan_batches`), each read with `read_clips` as uint8 (B, T, H, W, C):
    the scoring passes' reader (use with `DataLoader(batch_size=None)`).

    With `spans`, a batch is `read_spans`' (frames (L, H, W, C), offsets (B,)) instead: each frame
    once, for models that work per frame (`frame_features`).

    The store opens lazily in each process, as for `ClipDataset`; every 8 batches freed heap memory
    goes back to the system in the reading process.
    """

    def __init__(self, store_url: str, index: list[tuple[str, int]], clip_len: int, batch: int, *,
                 storage_options: dict[str, Any] | None = None, spans: bool = False) -> None:
        super().__init__(store_url, clip_len, storage_options)
        self.batches = plan_batches(index, batch)
        self.spans = spans

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> Any:
        vid, starts = self.batches[i]
        if self.spans:
            frames, offsets = read_spans(self._video(vid), starts, self.clip_len)
            release_freed_memory(every=8)
            return torch.from_numpy(np.ascontiguousarray(frames)), torch.from_numpy(offsets)
        clips = torch.from_numpy(np.ascontiguousarray(read_clips(self._video(vid), starts, self.clip_len)))
        release_freed_memory(every=8)
        return clips
