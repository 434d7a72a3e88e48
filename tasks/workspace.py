"""Where outputs live: one workspace root (local folder or fsspec URL) holding stores, checkpoints,
score tables and reports, so a whole run moves or is deleted as one folder."""

from __future__ import annotations

import os

from vad.storage import check_dataset_name

from vad.errors import ParameterError

DEFAULT_ROOT = "./vad-workspace"


def default_root() -> str:
    """`$VAD_ROOT`, else `./vad-workspace`."""
    return os.environ.get("VAD_ROOT") or DEFAULT_ROOT


def store_url(root: str, dataset: str) -> str:
    """The clip store of `dataset` under workspace `root`: `<root>/stores/<dataset>.zarr`."""
    return f"{root.rstrip('/')}/stores/{check_dataset_name(dataset)}.zarr"


def checkpoint_path(root: str, dataset: str, role: str, arch: str) -> str:
    """Where `vad train` writes by default: `<root>/checkpoints/<dataset>/<role>-<arch>.pt`."""
    if "://" in root:
        raise ParameterError(f"checkpoints are written to a local folder; {root!r} is a URL (pass --out PATH)")
    return f"{root.rstrip('/')}/checkpoints/{check_dataset_name(dataset)}/{role}-{arch}.pt"


def discard_empty_store(url: str) -> bool:
    """Delete the clip store at `url` when it holds no video group at all, so an ingest that ingested
    nothing leaves no empty store behind; True when one was deleted. A store with any group stays."""
    import fsspec
    from vad.storage import ClipStore

    from vad.errors import StoreNotFoundError

    try:
        if ClipStore.open(url).video_ids(include_incomplete=True):
            return False
    except StoreNotFoundError:
        return False
    fs, path = fsspec.core.url_to_fs(url)
    fs.rm(path, recursive=True)
    return True
