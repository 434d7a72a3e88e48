"""Freed memory handed back during long passes: the trim runs every n-th call, and can be switched off."""

import importlib
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_the_trim_runs_on_every_nth_call_only(monkeypatch):
    import vad.tasks.runtime.memory as memory

    monkeypatch.delenv("VAD_NO_MALLOC_TRIM", raising=False)
    memory = importlib.reload(memory)
    calls = []
    monkeypatch.setattr(memory, "_malloc_trim", lambda: calls.append)
    ran = [memory.release_freed_memory(every=3) for _ in range(7)]
    assert ran == [False, False, True, False, False, True, False] and calls == [0, 0]


def test_the_trim_can_be_switched_off(monkeypatch):
    import vad.tasks.runtime.memory as memory

    monkeypatch.setenv("VAD_NO_MALLOC_TRIM", "1")
    memory = importlib.reload(memory)
    assert memory.release_freed_memory() is False
    monkeypatch.delenv("VAD_NO_MALLOC_TRIM")
    importlib.reload(memory)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_each_caller_counts_its_own_calls(monkeypatch):
    import vad.tasks.runtime.memory as memory

    monkeypatch.delenv("VAD_NO_MALLOC_TRIM", raising=False)
    memory = importlib.reload(memory)
    monkeypatch.setattr(memory, "_malloc_trim", lambda: lambda _pad: None)
    every_2, every_3 = [], []
    for _ in range(6):  # interleaved: a shared count would run the trims at other calls
        every_2.append(memory.release_freed_memory(every=2))
        every_3.append(memory.release_freed_memory(every=3))
    assert every_2 == [False, True] * 3 and every_3 == [False, False, True] * 2
