"""The Zarr 3 clip store: one store per dataset, one group per video.

Layout of a video group (its name is the video id):
  frames     uint8 (N, H, W, C), chunked along time in clip-sized chunks, compressed
  labels     int8 (N,), 1 anomalous, 0 normal, -1 unknown
  scene_cut  bool (N,), True where frame i starts a new scene (frame 0 is always False)
  attributes under "vad": source URI and content hash, fps, original size, frame count, split,
             preprocessing spec, ... and `complete`, written last.

A group whose `complete` is not true is an ingest that never finished: readers refuse it and the
next ingest redoes it.

A group is written by one process at a time: `begin_video` takes the group's lock file (a store at
a local path: `<folder>/.<store name>.locks/<video id>.lock`, see `storage._locks`), waiting up to
`lock_timeout` seconds for another writer, and `finish` or `abort` releases it; `delete_video`
takes it too. A store at an fsspec URL (`s3://...`) is not locked.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from vad.storage._clips import Clip, clip_windows
from vad.storage._locks import BREAK_STALE_S, GROUP_LOCK_WAIT_S, FileLock, acquire, process_alive
from zarr.codecs import ZstdCodec

from vad.errors import IncompleteVideoError, ParameterError, StoreNotFoundError

STORE_VERSION = 1
ATTRS = "vad"

# Chosen by measurement (benchmarks/codecs.py, benchmarks/ingest.py, docs/storage.md). RGB: zstd's
# fast level -3 compresses a 480x852 frame of real camera footage in about 1.8 ms of CPU against
# 2.3 ms at level 1, for 6-11% more bytes; ingest shares two cores with FFmpeg, so that CPU is
# frames/s. Blosc/LZ4 is faster still but leaves files over 40% larger, and writing those bytes costs
# most of what it saves. Gray frames are a third of the bytes, so the codec costs ingest little, and
# level -3 (no entropy coding of literals) stores them 33% larger: level 1. Zarr records the codec
# in each array's metadata, so stores written before (level 1 for RGB too) read as before.
FRAMES_CODEC = ZstdCodec(level=-3)
GRAY_FRAMES_CODEC = ZstdCodec(level=1)


def _open_group(url: str, mode: str, storage_options: Mapping[str, Any] | None, **kwargs: Any) -> zarr.Group:
    opts = dict(storage_options) if storage_options and "://" in url else None
    return zarr.open_group(url, mode=mode, storage_options=opts, **kwargs)  # type: ignore[arg-type]


def _clear_abandoned(final: Path) -> None:
    """Remove the hidden `.NAME.new-PID-THREAD` folders of creations whose process is gone (killed
    between writing the metadata and renaming the folder into place). Those of live processes stay, and
    so do any younger than `BREAK_STALE_S` (a creation takes milliseconds; the age guards one under way
    on another machine that shares the folder, whose process id means nothing here)."""
    for tmp in final.parent.glob(f".{final.name}.new-*"):
        pid = tmp.name.rsplit(".new-", 1)[1].split("-", 1)[0]
        try:
            made = tmp.stat().st_mtime
        except OSError:  # removed meanwhile
            continue
        if time.time() - made > BREAK_STALE_S and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


class ClipStore:
    """A dataset's clip store at a local path or fsspec URL (e.g. `s3://bucket/ped2.zarr`)."""

    def __init__(self, group: zarr.Group, url: str) -> None:
        self._group = group
        self.url = url

    @classmethod
    def open(cls, url: str, *, writable: bool = False, storage_options: Mapping[str, Any] | None = None) -> ClipStore:
        """Open an existing store; a missing one is a `StoreNotFoundError`, never a new empty store."""
        try:
            group = _open_group(str(url), "r+" if writable else "r", storage_options)
        except FileNotFoundError as exc:
            raise StoreNotFoundError(f"{url}: no clip store here (run `vad ingest` first)") from exc
        if ATTRS not in group.attrs:
            raise StoreNotFoundError(f"{url}: a Zarr group, but not a clip store")
        return cls(group, str(url))

    @classmethod
    def create(
        cls, url: str, *, dataset: str, overwrite: bool = False, storage_options: Mapping[str, Any] | None = None
    ) -> ClipStore:
        """Create an empty store for `dataset`; an existing one is an error unless `overwrite`."""
        # The attributes go into the group's one metadata document, written atomically: no reader
        # ever finds the group without them (and so takes it for a foreign Zarr group).
        # A local store is made beside its path and renamed into place, so that the folder appears
        # with its metadata: a writer opening it at the same moment (another thread or process
        # creating it too) finds either nothing or a complete store, never a folder still empty.
        attrs = {ATTRS: {"store_version": STORE_VERSION, "dataset": dataset}}
        exists = ParameterError(f"{url}: a store already exists (pass overwrite=True to replace it)")
        if not overwrite and "://" not in str(url):
            final = Path(url)
            if final.exists() and not final.is_dir():
                raise ParameterError(f"{url}: is a file, not a folder; a clip store is a folder (choose another path)")
            if final.exists() and any(final.iterdir()):
                raise exists
            final.parent.mkdir(parents=True, exist_ok=True)
            _clear_abandoned(final)
            tmp = final.parent / f".{final.name}.new-{os.getpid()}-{threading.get_ident()}"
            shutil.rmtree(tmp, ignore_errors=True)
            _open_group(str(tmp), "w-", None, attributes=attrs)
            try:
                os.rename(tmp, final)  # over an empty folder too; a folder with contents refuses
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise exists from exc
            return cls(_open_group(str(final), "r+", None), str(url))
        try:
            group = _open_group(str(url), "w" if overwrite else "w-", storage_options, attributes=attrs)
        except (FileExistsError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError) as exc:
            raise exists from exc
        return cls(group, str(url))

    @classmethod
    def open_or_create(
        cls, url: str, *, dataset: str, storage_options: Mapping[str, Any] | None = None
    ) -> ClipStore:
        """Open the store for writing, creating it first when absent; the dataset name must agree.
        Safe when several processes create one new store at once: who finds it made opens it."""
        try:
            store = cls.open(url, writable=True, storage_options=storage_options)
        except StoreNotFoundError:
            try:
                return cls.create(url, dataset=dataset, storage_options=storage_options)
            except ParameterError:  # another process created it since: open theirs
                store = cls.open(url, writable=True, storage_options=storage_options)
        if store.dataset != dataset:
            raise ParameterError(f"{url}: this store holds dataset {store.dataset!r}, not {dataset!r}")
        return store

    @property
    def dataset(self) -> str:
        return str(self._group.attrs[ATTRS]["dataset"])

    def video_ids(self, *, split: str | None = None, include_incomplete: bool = False) -> list[str]:
        """Ids of the videos in the store (complete ones unless asked), optionally of one split."""
        out = []
        for name, group in self._group.groups():
            attrs = group.attrs.get(ATTRS, {})
            if not include_incomplete and not attrs.get("complete"):
                continue
            if split is None or attrs.get("split") == split:
                out.append(name)
        return sorted(out)

    def status(self, video_id: str) -> dict[str, Any] | None:
        """The stored attributes of a video group (complete or not), or None when it is absent."""
        try:
            group = self._group[video_id]
        except KeyError:
            return None
        return dict(group.attrs.get(ATTRS, {}))

    def video(self, video_id: str) -> Video:
        """A complete video for reading; a missing or unfinished one is a clear error."""
        attrs = self.status(video_id)
        if attrs is None:
            raise StoreNotFoundError(f"{self.url}: no video {video_id!r} in this store")
        if not attrs.get("complete"):
            raise IncompleteVideoError(f"{self.url}: video {video_id!r} was not completely ingested; ingest it again")
        return Video(video_id, self._group[video_id], attrs)  # type: ignore[arg-type]

    def videos(self, *, split: str | None = None) -> Iterator[Video]:
        for video_id in self.video_ids(split=split):
            yield self.video(video_id)

    def lock_video(self, video_id: str, *, timeout: float = GROUP_LOCK_WAIT_S) -> FileLock | None:
        """Take the lock of one video group (None for a store at a URL, which is not locked)."""
        url = self.url.removeprefix("file://")
        if "://" in url:
            return None
        store = Path(url)
        return acquire(store.parent / f".{store.name}.locks" / f"{video_id}.lock",
                       purpose=f"write video {video_id!r} of {self.url}", timeout=timeout)

    def delete_video(self, video_id: str, *, lock_timeout: float = GROUP_LOCK_WAIT_S) -> None:
        """Remove a video group, once no other process is writing it."""
        lock = self.lock_video(video_id, timeout=lock_timeout)
        try:
            self._delete_group(video_id)
        finally:
            if lock is not None:
                lock.release()

    def update_video(self, video_id: str, *, labels: np.ndarray, attrs: Mapping[str, Any],
                     lock_timeout: float = GROUP_LOCK_WAIT_S) -> None:
        """Rewrite a complete video's labels and some of its attributes in place (its frames stay),
        under the group's lock: what a re-ingest does when only labels or split changed."""
        lock = self.lock_video(video_id, timeout=lock_timeout)
        try:
            group = self._group[video_id]
            stored = group["labels"]
            if labels.shape != stored.shape:
                raise ParameterError(f"video {video_id!r}: {labels.shape[0]} labels for {stored.shape[0]} frames")
            stored[:] = labels.astype(np.int8)
            group.attrs[ATTRS] = {**dict(group.attrs[ATTRS]), **attrs}
        finally:
            if lock is not None:
                lock.release()

    def _delete_group(self, video_id: str) -> None:
        if video_id in self._group:
            del self._group[video_id]

    def begin_video(
        self, video_id: str, *, height: int, width: int, channels: int, chunk_frames: int, attrs: Mapping[str, Any],
        lock_timeout: float = GROUP_LOCK_WAIT_S,
    ) -> VideoWriter:
        """Start (re)writing a video group: take its lock (waiting up to `lock_timeout` seconds for
        another writer), replace any old group of that id, `complete` unset."""
        lock = self.lock_video(video_id, timeout=lock_timeout)
        try:
            self._delete_group(video_id)
            group = self._group.create_group(video_id)
            group.attrs[ATTRS] = {**attrs, "complete": False}
            frames = group.create_array(
                "frames", shape=(0, height, width, channels), chunks=(chunk_frames, height, width, channels),
                dtype="uint8", compressors=FRAMES_CODEC if channels == 3 else GRAY_FRAMES_CODEC,
                # Zarr's default check for all-zero chunks costs more than compressing them.
                config={"write_empty_chunks": True},
            )
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return VideoWriter(self, video_id, group, frames, lock)


@dataclass
class VideoWriter:
    """Appends frames to a new video group; `finish` writes labels and marks it complete. Holds the
    group's lock until `finish` or `abort`."""

    store: ClipStore
    video_id: str
    group: zarr.Group
    frames: zarr.Array
    lock: FileLock | None = None
    _cuts: list[np.ndarray] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    def append(self, frames: np.ndarray, scene_cut: np.ndarray) -> None:
        """Append (n, H, W, C) frames and their (n,) scene-cut flags."""
        if len(scene_cut) != len(frames):
            raise ParameterError(f"{len(frames)} frames but {len(scene_cut)} scene-cut flags")
        self.frames.append(frames, axis=0)
        self._cuts.append(np.asarray(scene_cut, dtype=bool))

    def finish(self, labels: np.ndarray, attrs: Mapping[str, Any]) -> None:
        """Write labels and scene cuts, then the attributes with `complete` true, last."""
        n = self.n_frames
        if labels.shape != (n,):
            raise ParameterError(f"video {self.video_id!r}: {labels.shape[0]} labels for {n} frames")
        cuts = np.concatenate(self._cuts) if self._cuts else np.zeros(0, dtype=bool)
        chunk = max(1, min(n, 65536))
        self.group.create_array("labels", data=labels.astype(np.int8), chunks=(chunk,))
        self.group.create_array("scene_cut", data=cuts, chunks=(chunk,))
        current = dict(self.group.attrs[ATTRS])
        self.group.attrs[ATTRS] = {**current, **attrs, "frame_count": n, "complete": True}
        self._release()

    def abort(self) -> None:
        """Remove the unfinished group so nothing half-written is left behind."""
        try:
            self.store._delete_group(self.video_id)
        finally:
            self._release()

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()


class Video:
    """A complete video of a clip store, read lazily: clips read only their own frames."""

    def __init__(self, video_id: str, group: zarr.Group, attrs: dict[str, Any]) -> None:
        self.id = video_id
        self.attrs = attrs
        self.frames: zarr.Array = group["frames"]  # type: ignore[assignment]
        self._group = group

    def __repr__(self) -> str:
        return f"Video({self.id!r}, split={self.split!r}, frames={self.n_frames}, shape={self.frames.shape[1:]})"

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def split(self) -> str:
        return str(self.attrs["split"])

    @cached_property
    def labels(self) -> np.ndarray:
        return np.asarray(self._group["labels"][:], dtype=np.int8)

    @cached_property
    def scene_cut(self) -> np.ndarray:
        return np.asarray(self._group["scene_cut"][:], dtype=bool)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames [start, stop) as (stop - start, H, W, C) uint8."""
        if not 0 <= start < stop <= self.n_frames:
            raise ParameterError(f"video {self.id!r}: frames [{start}, {stop}) outside 0..{self.n_frames}")
        return np.asarray(self.frames[start:stop])

    def clips(self, length: int, stride: int) -> Iterator[Clip]:
        """Every clip of `length` frames at `stride`: floor((N - T) / S) + 1 of them."""
        for i, (start, stop) in enumerate(clip_windows(self.n_frames, length, stride)):
            yield Clip(self, i, start, stop)
