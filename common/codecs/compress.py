"""Lossless byte compression of a tensor's raw bytes (zstd, lz4): exact, and worth it when values repeat.

Wire format: one flag byte (STORED or COMPRESSED) then the payload. A tensor whose compressed form would not
be smaller travels stored, so the encoding never exceeds the raw size by more than one byte; that is also the
bound check_manifest enforces on what a peer announces.

Decoding never trusts the payload's own idea of its size: it inflates into a buffer of the tensor's declared
size and stops at the first byte beyond it, so a few KB that would inflate to gigabytes (a decompression bomb)
cost at most the declared size (plus, for zstd, a window no larger than twice that size, at least 1 MiB).
"""

from __future__ import annotations

import threading
from typing import Callable

import torch

from fedstream.common.codecs.base import Codec, CodecError, RawCodec
from fedstream.common.wire.tensors import byte_view, numel_of

STORED, COMPRESSED = 0, 1
_RAW = RawCodec()


class ByteCompressionCodec(Codec):
    """A lossless codec made of a compress and a decompress function over the tensor's raw bytes."""

    lossless = True

    def __init__(self, name: str, compress: Callable[[memoryview], bytes],
                 decompress: Callable[[memoryview, int], bytes | bytearray]) -> None:
        self.name = name
        self._compress = compress
        self._decompress = decompress

    def encode(self, tensor: torch.Tensor) -> bytes:
        raw = byte_view(tensor)
        packed = self._compress(raw) if raw.nbytes else b""
        if raw.nbytes and len(packed) < raw.nbytes:
            return bytes((COMPRESSED,)) + packed
        return bytes((STORED,)) + raw.tobytes()

    def decode(self, data: memoryview | bytes | bytearray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        view = memoryview(data).cast("B")
        expected = _RAW.max_encoded_bytes(numel_of(shape), dtype)
        if len(view) < 1 or view[0] not in (STORED, COMPRESSED):
            raise CodecError(f"{self.name} tensor of shape {list(shape)} must start with a flag byte 0 or 1")
        body = view[1:]
        if view[0] == STORED:
            if len(body) != expected:
                raise CodecError(f"{self.name} stored tensor of shape {list(shape)} needs {expected + 1} bytes, "
                                 f"got {len(view)}")
            return _RAW.decode(bytearray(body), dtype, shape)
        try:
            raw = self._decompress(body, expected)
        except Exception as exc:  # each library raises its own error type for corrupt input
            raise CodecError(f"{self.name} tensor of shape {list(shape)} does not decompress: {exc}") from None
        if len(raw) != expected:
            raise CodecError(f"{self.name} tensor of shape {list(shape)} decompressed to {len(raw)} bytes, "
                             f"expected {expected}")
        return _RAW.decode(raw if isinstance(raw, bytearray) else bytearray(raw), dtype, shape)

    def max_encoded_bytes(self, numel: int, dtype: torch.dtype) -> int:
        return 1 + _RAW.max_encoded_bytes(numel, dtype)


MIN_ZSTD_WINDOW = 1 << 20


def zstd_window_limit(expected: int) -> int:
    """The largest zstd window a tensor of `expected` bytes may ask for: twice its size, at least 1 MiB."""
    return max(MIN_ZSTD_WINDOW, 1 << (2 * max(expected, 1) - 1).bit_length())


def zstd_inflate(body: memoryview, expected: int) -> bytearray:
    """Inflates one zstd frame into exactly `expected` bytes, refusing a frame that declares or yields more.

    Streams into a buffer of the declared size (never the size the frame claims) with a bounded window, then
    reads one byte more: any output beyond `expected` is refused before it is held anywhere.
    """
    import zstandard

    declared = zstandard.frame_content_size(body)
    if declared not in (-1, expected):  # -1: the frame does not state its size
        raise ValueError(f"the frame declares {declared} bytes")
    reader = zstandard.ZstdDecompressor(max_window_size=zstd_window_limit(expected)).stream_reader(body)
    out = bytearray(expected)
    view, filled = memoryview(out), 0
    while filled < expected:
        got = reader.readinto(view[filled:])
        if not got:
            raise ValueError(f"the frame ends after {filled} bytes")
        filled += got
    if reader.read(1):
        raise ValueError(f"the frame inflates past {expected} bytes")
    return out


def zstd_codec(level: int = 1) -> ByteCompressionCodec:
    """zstd at a fast level; one compressor per thread, since zstandard's contexts are not thread-safe."""
    import zstandard

    local = threading.local()

    def compress(raw: memoryview) -> bytes:
        if not hasattr(local, "compressor"):
            local.compressor = zstandard.ZstdCompressor(level=level)
        return local.compressor.compress(raw)

    return ByteCompressionCodec("zstd", compress, zstd_inflate)


def lz4_codec() -> ByteCompressionCodec | None:
    """lz4 when the lz4 package is installed (it is optional); None otherwise."""
    try:
        import lz4.block
    except ImportError:
        return None

    def compress(raw: memoryview) -> bytes:
        return lz4.block.compress(raw, store_size=False)

    def decompress(body: memoryview, expected: int) -> bytes:
        """LZ4 blocks carry no size: the output buffer is `expected` bytes and a longer block fails to decode."""
        return lz4.block.decompress(body, uncompressed_size=expected)

    return ByteCompressionCodec("lz4", compress, decompress)
