import pytest

from fedstream.common.allocator import (M_ARENA_MAX, M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, MAX_MMAP_THRESHOLD,
                                        settings, tune_malloc)
from fedstream.common.wire.framing import DEFAULT_CHUNK_BYTES


def test_chunks_stay_below_the_mmap_threshold_and_tensors_above_it() -> None:
    values = settings(DEFAULT_CHUNK_BYTES)
    framed_chunk = DEFAULT_CHUNK_BYTES + 64  # tag, length varint, bytes object header
    assert framed_chunk < values[M_MMAP_THRESHOLD] < 4 << 20  # a 1024x1024 float32 tensor is mmapped
    assert values[M_TRIM_THRESHOLD] > values[M_MMAP_THRESHOLD] and values[M_ARENA_MAX] >= 1
    assert settings(64 << 20)[M_MMAP_THRESHOLD] == MAX_MMAP_THRESHOLD


def test_tuning_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDSTREAM_MALLOC", "off")
    assert tune_malloc() is False
