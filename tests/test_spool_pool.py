"""Spool files are reused across uploads, within a byte budget, and never handed to two writers at once."""

from collections import OrderedDict
from pathlib import Path

import torch

from fedstream.common.wire.manifest import encode_state, layout_of
from fedstream.common.wire.framing import Crc32
from fedstream.server.intake.spool import SpoolPool, SpoolWriter


def _spool(where, state):
    manifest, buffers = encode_state(state, "raw")
    writer = SpoolWriter(where, layout_of(manifest), manifest.total_bytes)
    crc = Crc32()
    for buf in buffers:
        writer.write(buf)
        crc.update(buf)
    return writer.finish(crc.value, crc.nbytes)


def test_a_finished_file_is_overwritten_by_the_next_upload(tmp_path: Path) -> None:
    pool = SpoolPool(tmp_path)
    big = OrderedDict(w=torch.arange(1000, dtype=torch.float32))
    small = OrderedDict(w=torch.full((10,), 7.0))
    first = _spool(pool, big)
    path = first.path
    first.delete()
    first.delete()  # twice is once
    assert pool.in_use == 0 and path.exists()
    second = _spool(pool, small)
    assert second.path == path, "the idle file was not reused"
    assert torch.equal(second.tensor("w"), small["w"]), "stale bytes of the previous upload leaked into this one"
    second.delete()


def test_concurrent_writers_get_distinct_files_and_the_fitting_one_is_preferred(tmp_path: Path) -> None:
    pool = SpoolPool(tmp_path)
    a = _spool(pool, OrderedDict(w=torch.zeros(100)))
    b = _spool(pool, OrderedDict(w=torch.zeros(5000)))
    assert a.path != b.path and pool.in_use == 2
    a.delete()
    b.delete()
    c = _spool(pool, OrderedDict(w=torch.ones(2000)))
    assert c.path == b.path, "a file large enough should be chosen over growing a small one"
    c.delete()


def test_idle_files_beyond_the_budget_and_after_close_are_deleted(tmp_path: Path) -> None:
    pool = SpoolPool(tmp_path, idle_bytes=6000)
    updates = [_spool(pool, OrderedDict(w=torch.zeros(1000))) for _ in range(3)]  # 4000 bytes each
    for update in updates:
        update.delete()
    assert len(list(tmp_path.glob("*.bin"))) == 1
    held = _spool(pool, OrderedDict(w=torch.zeros(10)))
    pool.close()
    assert not list(tmp_path.glob("*.bin")) or list(tmp_path.glob("*.bin")) == [held.path]
    held.delete()
    assert not list(tmp_path.glob("*.bin"))


def test_a_broken_stream_gives_its_file_back(tmp_path: Path) -> None:
    pool = SpoolPool(tmp_path)
    manifest, buffers = encode_state(OrderedDict(w=torch.zeros(100)), "raw")
    writer = SpoolWriter(pool, layout_of(manifest), manifest.total_bytes)
    writer.write(buffers[0][:40])
    writer.discard()
    assert pool.in_use == 0
