"""Handing freed memory back to the operating system during long passes.

glibc's allocator keeps memory that a process frees inside its heap, for reuse, and returns it
only from the heap's top. A scoring pass allocates large temporaries every batch (decoded clips,
activations) between small objects that live on (results, tensors torch caches), so freed space
stays trapped below them and the resident size grows with the number of clips scored even though
nothing holds the data: about 1 MB per clip for `vae3d` on Ped2 (`benchmarks/throughput.py`).
`malloc_trim(0)` returns every whole free page, wherever it lies. Elsewhere (macOS, musl) it is
a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import itertools
import os
import sys

_counters: dict[tuple[str, int], itertools.count] = {}  # one per call site


@functools.lru_cache(maxsize=1)
def _malloc_trim():  # noqa: ANN202
    if os.environ.get("VAD_NO_MALLOC_TRIM"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # no glibc
        return None


def release_freed_memory(every: int = 1) -> bool:
    """Call `malloc_trim(0)` on every `every`-th call from the same call site (each caller counts its
    own calls, so callers with different periods keep them); True if it ran."""
    trim = _malloc_trim()
    if trim is None:
        return False
    caller = sys._getframe(1)
    site = (caller.f_code.co_filename, caller.f_lineno)
    counter = _counters.get(site) or _counters.setdefault(site, itertools.count(1))
    if next(counter) % max(1, every):
        return False
    trim(0)
    return True
