import random

import pytest
import torch

from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.wire.framing import DataChunk, deserializer, frame_data, iter_chunks, serializer


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 1 << 20])
def test_framed_data_parses_as_protobuf_and_back_as_view(size: int) -> None:
    payload = bytes(random.getrandbits(8) for _ in range(min(size, 1000))) * (size // 1000 or 1)
    payload = payload[:size]
    wire = frame_data(memoryview(payload))
    assert pb.UpdateChunk.FromString(wire).data == payload
    assert pb.ModelChunk.FromString(wire).data == payload
    parsed = deserializer(pb.UpdateChunk)(wire)
    if size:
        assert isinstance(parsed, DataChunk) and bytes(parsed.data) == payload


def test_other_messages_go_through_protobuf() -> None:
    msg = pb.UpdateChunk(trailer=pb.Trailer(crc32=5, total_bytes=9))
    assert deserializer(pb.UpdateChunk)(serializer(msg)) == msg


def test_iter_chunks_covers_every_byte_in_order_with_bounded_pieces() -> None:
    rng = random.Random(1)
    for _ in range(50):
        buffers = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))) for _ in range(rng.randint(0, 12))]
        size = rng.randint(1, 200)
        pieces = list(iter_chunks([memoryview(b) for b in buffers], size))
        assert b"".join(bytes(p) for p in pieces) == b"".join(buffers)
        assert all(0 < len(p) <= size for p in pieces)
        assert all(len(p) == size for p in pieces[:-1])


def test_running_crc_matches_zlib_whatever_the_chunking() -> None:
    import zlib

    from fedstream.common.wire.framing import Crc32

    rng = random.Random(7)
    data = bytes(rng.getrandbits(8) for _ in range(100_000))
    for _ in range(20):
        crc, pos = Crc32(), 0
        while pos < len(data):
            step = rng.randint(1, 9000)
            crc.update(memoryview(data)[pos : pos + step])
            pos += step
        assert (crc.value, crc.nbytes) == (zlib.crc32(data), len(data))


def test_all_finite_agrees_with_isfinite_including_overflowing_sums() -> None:
    from fedstream.common.wire.tensors import all_finite

    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        values = torch.ones(1000, dtype=dtype)
        assert all_finite(values)
        for bad in (float("nan"), float("inf"), float("-inf")):
            broken = values.clone()
            broken[999] = bad
            assert not all_finite(broken), (dtype, bad)
    huge = torch.full((10,), 3e38)  # every element finite, their sum is not
    assert all_finite(huge)
    assert all_finite(torch.tensor([1, 2], dtype=torch.int64)) and all_finite(torch.empty(0))
