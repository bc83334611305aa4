"""Decompression bombs: a few KB that would inflate to gigabytes cost at most the tensor's declared size.

Each test builds a real bomb and decodes it the ways a peer's bytes are decoded: `codec.decode` (what the server's
spool read-back calls) and `decode_state` (what a client's download calls). Python-side allocations are measured
with tracemalloc; one test measures the whole process (zstd's C allocations included) in a child process.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from fedstream.common.codecs.registry import CodecError, available_codecs, get_codec
from fedstream.common.codecs.sparsify import BITMAP, DENSE, HEADER, INDEX32
from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.wire.manifest import ManifestError, decode_state

GIB = 1 << 30
SHAPE = (100, 10)  # the declared tensor: 4,000 bytes of float32
DECLARED = 4 * SHAPE[0] * SHAPE[1]
ALLOWANCE = 4 << 20  # what a refused decode may allocate on the Python heap (the declared size is 4 KB)


def zstd_bomb(inflated: int, content_size: bool) -> bytes:
    """A zstd frame of zeros that inflates to `inflated` bytes, built without holding them (about 32 KB per GB).

    Its window is 1 MiB, which the decoder allows for any tensor: only the size check can refuse it.
    """
    import zstandard

    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=20, write_content_size=int(content_size))
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj(size=inflated)
    zeros = bytes(16 << 20)
    parts = [compressor.compress(zeros) for _ in range(inflated // len(zeros))]
    parts.append(compressor.flush())
    return b"".join(parts)


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """zstd payloads (flag byte included) that inflate to 1 GiB, with and without the size in the frame header."""
    return {"sized": b"\x01" + zstd_bomb(GIB, True), "unsized": b"\x01" + zstd_bomb(GIB, False)}


def peak_python_bytes(decode: Callable[[], object]) -> tuple[int, BaseException | None]:
    """Peak bytes allocated on the Python heap while decode runs, and what it raised."""
    tracemalloc.start()
    raised = None
    try:
        decode()
    except (CodecError, ManifestError) as exc:
        raised = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, raised


def manifest_for(codec: str, nbytes: int) -> pb.Manifest:
    spec = pb.TensorSpec(name="w", dtype="float32", shape=list(SHAPE), codec=codec, byte_length=nbytes)
    return pb.Manifest(tensors=[spec], total_bytes=nbytes)


def test_the_bomb_is_real(bombs: dict[str, bytes]) -> None:
    import zstandard

    assert len(bombs["sized"]) < 64 << 10 and len(bombs["unsized"]) < 64 << 10
    assert zstandard.frame_content_size(bombs["sized"][1:]) == GIB
    reader = zstandard.ZstdDecompressor().stream_reader(bombs["unsized"][1:])
    assert len(reader.read(64 << 20)) == 64 << 20  # it does inflate far past the declared 4 KB


@pytest.mark.parametrize("kind", ["sized", "unsized"])
@pytest.mark.parametrize("path", ["codec.decode", "decode_state"])
def test_zstd_bomb_is_refused_within_the_declared_size(bombs: dict[str, bytes], kind: str, path: str) -> None:
    payload = bombs[kind]
    if path == "codec.decode":
        peak, raised = peak_python_bytes(lambda: get_codec("zstd").decode(payload, torch.float32, SHAPE))
    else:
        peak, raised = peak_python_bytes(lambda: decode_state(manifest_for("zstd", len(payload)), bytearray(payload)))
    assert raised is not None, "a 1 GiB bomb for a 4 KB tensor was accepted"
    assert "1073741824" in str(raised) or "inflates past" in str(raised)
    assert peak < ALLOWANCE, f"refusing the bomb allocated {peak} bytes on the Python heap"


def test_zstd_that_inflates_short_is_refused() -> None:
    import zstandard

    short = b"\x01" + zstandard.ZstdCompressor(write_content_size=False).compress(bytes(DECLARED - 4))
    with pytest.raises(CodecError, match="ends after 3996 bytes"):
        get_codec("zstd").decode(short, torch.float32, SHAPE)


def test_zstd_frame_asking_for_a_huge_window_is_refused() -> None:
    import zstandard

    params = zstandard.ZstdCompressionParameters.from_level(1, window_log=27, write_content_size=0)
    stream = zstandard.ZstdCompressor(compression_params=params).compressobj()  # size unknown: the window stays
    wide = stream.compress(bytes(DECLARED)) + stream.flush()
    assert zstandard.get_frame_parameters(wide).window_size == 1 << 27
    with pytest.raises(CodecError, match="memory"):
        get_codec("zstd").decode(b"\x01" + wide, torch.float32, SHAPE)


@pytest.mark.skipif("lz4" not in available_codecs(), reason="lz4 is optional")
def test_lz4_bomb_is_refused_within_the_declared_size() -> None:
    import lz4.block

    bomb = b"\x01" + lz4.block.compress(bytes(64 << 20), store_size=False)  # 64 MiB in ~250 KB
    peak, raised = peak_python_bytes(lambda: get_codec("lz4").decode(bomb, torch.float32, SHAPE))
    assert isinstance(raised, CodecError)
    assert peak < ALLOWANCE + len(bomb)


@pytest.mark.parametrize("codec", ["sparse", "sparse-q8", "topk"])
def test_sparse_count_beyond_numel_is_refused_before_allocation(codec: str) -> None:
    lying = HEADER.pack(INDEX32, 1 << 40) + bytes(64)
    peak, raised = peak_python_bytes(lambda: get_codec(codec).decode(lying, torch.float32, SHAPE))
    assert isinstance(raised, CodecError) and "1099511627776 values" in str(raised)
    assert peak < ALLOWANCE


@pytest.mark.parametrize("fmt", [DENSE, BITMAP, INDEX32])
def test_sparse_payload_shorter_than_its_count_is_refused_before_allocation(fmt: int) -> None:
    count = SHAPE[0] * SHAPE[1]
    lying = HEADER.pack(fmt, count) + bytes(16)
    peak, raised = peak_python_bytes(lambda: get_codec("sparse").decode(lying, torch.float32, SHAPE))
    assert isinstance(raised, CodecError)
    assert peak < ALLOWANCE


def test_q8_block_count_must_match_the_shape() -> None:
    n = SHAPE[0] * SHAPE[1]
    lying = struct.pack("<f", 1.0) * 1000 + bytes(n)  # 1000 scales where 4 blocks exist
    with pytest.raises(CodecError, match=r"needs 1016 bytes \(4 scales and 1000 codes\)"):
        get_codec("q8").decode(lying, torch.float32, SHAPE)


def test_honest_compressed_tensors_still_decode() -> None:
    values = torch.zeros(SHAPE)
    values[::7] = torch.arange(SHAPE[1], dtype=torch.float32)
    for name in [c for c in ("zstd", "lz4") if c in available_codecs()]:
        codec = get_codec(name)
        encoded = codec.encode(values)
        assert encoded[0] == 1  # compressed, not stored
        assert torch.equal(codec.decode(encoded, torch.float32, SHAPE), values)
    big = torch.from_numpy(np.tile(np.arange(1024, dtype=np.float32), 4096))  # 16 MiB, window over 1 MiB
    encoded = get_codec("zstd").encode(big)
    assert torch.equal(get_codec("zstd").decode(encoded, torch.float32, tuple(big.shape)), big)


CHILD = """
import resource, sys, torch
from fedstream.common.codecs.registry import get_codec
from fedstream.common.wire.manifest import decode_state
from fedstream.common.proto import coordinator_pb2 as pb
payload = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
refused = 0
for _ in range(3):
    try:
        get_codec("zstd").decode(payload, torch.float32, (100, 10))
    except ValueError:
        refused += 1
    spec = pb.TensorSpec(name="w", dtype="float32", shape=[100, 10], codec="zstd", byte_length=len(payload))
    try:
        decode_state(pb.Manifest(tensors=[spec], total_bytes=len(payload)), bytearray(payload))
    except ValueError:
        refused += 1
print(refused, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sized", "unsized"])
def test_zstd_bomb_costs_the_process_no_more_than_a_few_mib(bombs: dict[str, bytes], kind: str,
                                                           tmp_path: Path) -> None:
    """Whole-process peak RSS (zstd's own C buffers included), both decode paths, three bombs each."""
    path = tmp_path / "bomb.bin"
    path.write_bytes(bombs[kind])
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    refused, grown_kib = map(int, out.stdout.split())
    assert refused == 6
    assert grown_kib < 16 << 10, f"decoding six 1 GiB bombs raised the peak RSS by {grown_kib} KiB"
