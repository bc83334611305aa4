"""Sparse tensors on the wire: only the nonzero (or the k largest) values travel, with their positions.

Wire format: a 9-byte header (format byte, uint64 count of values sent), the positions, then the values in an
inner codec (raw, fp16, bf16 or q8). The encoder picks the smallest of three position formats:

- DENSE: no positions, every value (what a dense tensor costs anyway, so sparse never loses more than 9 bytes);
- BITMAP: one bit per element (best from ~3% to ~90% nonzero);
- INDEX: sorted uint32 positions (uint64 above 2^32 elements), best for very sparse tensors such as top-k.

`sparse` is lossless; `sparse-fp16`/`sparse-bf16`/`sparse-q8` keep zeros exact and round the survivors with
their inner codec's bound. `topk` keeps exactly the k = ceil(fraction · n) largest-magnitude values and drops
the rest (error: each dropped value, all no larger in magnitude than the smallest kept one).
"""

from __future__ import annotations

import math
import struct

import numpy as np
import torch

from fedstream.common.codecs.base import Codec, CodecError, RawCodec
from fedstream.common.wire.tensors import byte_view, numel_of

HEADER = struct.Struct("<BQ")
DENSE, BITMAP, INDEX32, INDEX64 = 0, 1, 2, 3
DEFAULT_TOPK_FRACTION = 0.01


def _index_width(numel: int) -> int:
    return 4 if numel <= 2 ** 32 else 8


def _values_bytes(codec: Codec, count: int, dtype: torch.dtype) -> int:
    exact = codec.exact_encoded_bytes(count, dtype)
    if exact is None:
        raise ValueError(f"sparse values need a fixed-size inner codec; {codec.name} is data-dependent")
    return exact


def _as_bytes(data: memoryview | bytes | bytearray) -> memoryview:
    view = memoryview(data)
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


class SparseCodec(Codec):
    """Positions of the nonzero values plus those values in an inner codec; zeros are always exact."""

    def __init__(self, name: str, values: Codec) -> None:
        self.name = name
        self.values = values
        self.lossless = values.lossless

    def layout_sizes(self, numel: int, count: int, dtype: torch.dtype) -> dict[int, int]:
        """Bytes each position format needs for count values out of numel (header included)."""
        dense = _values_bytes(self.values, numel, dtype)
        sent = _values_bytes(self.values, count, dtype)
        width = _index_width(numel)
        return {DENSE: HEADER.size + dense, BITMAP: HEADER.size + (numel + 7) // 8 + sent,
                INDEX32 if width == 4 else INDEX64: HEADER.size + width * count + sent}

    def _smallest(self, numel: int, count: int, dtype: torch.dtype) -> tuple[int, int]:
        sizes = self.layout_sizes(numel, count, dtype)
        fmt = min(sizes, key=lambda f: (sizes[f], f))
        return fmt, sizes[fmt]

    def _pack(self, fmt: int, count: int, where: memoryview | bytes, values: torch.Tensor, size: int) -> bytearray:
        """Header, positions and encoded values written once into a buffer of the announced size."""
        encoded = self.values.encode(values)
        out = bytearray(size)
        HEADER.pack_into(out, 0, fmt, count)
        at = HEADER.size
        for part in (where, encoded):
            part = memoryview(part).cast("B")
            out[at : at + part.nbytes] = part
            at += part.nbytes
        if at != size:
            raise AssertionError(f"{self.name} produced {at} bytes where its layout says {size}")
        return out

    def encode(self, tensor: torch.Tensor) -> bytearray:
        flat = tensor.detach().reshape(-1)
        if flat.device.type != "cpu":
            flat = flat.cpu()
        nonzero = flat != 0
        count = int(torch.count_nonzero(nonzero))
        fmt, size = self._smallest(flat.numel(), count, flat.dtype)
        if fmt == DENSE:
            return self._pack(DENSE, flat.numel(), b"", flat, size)
        if fmt == BITMAP:
            return self._pack(BITMAP, count, np.packbits(nonzero.numpy(), bitorder="little").data, flat[nonzero], size)
        return self.encode_positions(flat, torch.nonzero(nonzero).reshape(-1))

    def encode_positions(self, flat: torch.Tensor, positions: torch.Tensor) -> bytearray:
        """Encodes flat as zero everywhere except at the sorted positions given."""
        numel, count = flat.numel(), positions.numel()
        fmt, size = self._smallest(numel, count, flat.dtype)
        if fmt == DENSE:
            dense = torch.zeros_like(flat)
            dense[positions] = flat[positions]
            return self._pack(DENSE, numel, b"", dense, size)
        if fmt == BITMAP:
            bits = torch.zeros(numel, dtype=torch.bool)
            bits[positions] = True
            where = np.packbits(bits.numpy(), bitorder="little").data
        else:
            where = byte_view(positions.to(torch.int32 if fmt == INDEX32 else torch.int64).contiguous())
        return self._pack(fmt, count, where, flat[positions].contiguous(), size)

    def decode(self, data: memoryview | bytes | bytearray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        view = _as_bytes(data)
        numel = numel_of(shape)
        if len(view) < HEADER.size:
            raise CodecError(f"{self.name} tensor of shape {list(shape)} needs at least {HEADER.size} bytes, got {len(view)}")
        fmt, count = HEADER.unpack_from(view)
        if fmt not in (DENSE, BITMAP, INDEX32, INDEX64) or count > numel:
            raise CodecError(f"{self.name} header says format {fmt} with {count} values for a tensor of {numel}")
        if fmt == DENSE:
            if count != numel or len(view) != HEADER.size + _values_bytes(self.values, numel, dtype):
                raise CodecError(f"{self.name} dense tensor of shape {list(shape)} has {len(view)} bytes, "
                                 f"expected {HEADER.size + _values_bytes(self.values, numel, dtype)}")
            return self.values.decode(view[HEADER.size :], dtype, tuple(shape))
        sizes = self.layout_sizes(numel, count, dtype)
        if fmt not in sizes or len(view) != sizes[fmt]:
            raise CodecError(f"{self.name} tensor of shape {list(shape)} with {count} values in format {fmt} "
                             f"needs {sizes.get(fmt, 'another format')} bytes, got {len(view)}")
        body = view[HEADER.size :]
        if fmt == BITMAP:
            nbits = (numel + 7) // 8
            bits = np.unpackbits(np.frombuffer(body[:nbits], dtype=np.uint8), count=numel, bitorder="little")
            positions = torch.from_numpy(np.flatnonzero(bits))
            if positions.numel() != count:
                raise CodecError(f"{self.name} bitmap marks {positions.numel()} positions; the header says {count}")
            rest = body[nbits:]
        else:
            width = 4 if fmt == INDEX32 else 8
            raw = np.frombuffer(body[: width * count], dtype=np.uint32 if width == 4 else np.int64)
            positions = torch.from_numpy(raw.astype(np.int64))
            if count and (int(positions[0]) < 0 or int(positions[-1]) >= numel
                          or (count > 1 and not bool((positions[1:] > positions[:-1]).all()))):
                raise CodecError(f"{self.name} positions must increase strictly within [0, {numel})")
            rest = body[width * count :]
        out = torch.zeros(numel, dtype=dtype)
        if count:
            out[positions] = self.values.decode(rest, dtype, (count,))
        return out.reshape(shape)

    def max_encoded_bytes(self, numel: int, dtype: torch.dtype) -> int:
        return HEADER.size + self.values.max_encoded_bytes(numel, dtype)


class TopKCodec(Codec):
    """Keeps the k = ceil(fraction · n) largest-magnitude values (zeros among them are not sent)."""

    lossless = False

    def __init__(self, fraction: float = DEFAULT_TOPK_FRACTION, name: str = "topk") -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"top-k fraction must be in (0, 1], got {fraction}; e.g. 0.01 keeps 1% of each tensor")
        self.name = name
        self.fraction = fraction
        self.sparse = SparseCodec(name, RawCodec())

    def keep_count(self, numel: int) -> int:
        return min(numel, max(1, math.ceil(self.fraction * numel))) if numel else 0

    def positions(self, flat: torch.Tensor) -> torch.Tensor:
        """Sorted positions of the k largest-magnitude nonzero values of flat."""
        k = self.keep_count(flat.numel())
        if k >= flat.numel():
            chosen = torch.arange(flat.numel())
        else:
            chosen = torch.topk(flat.abs(), k, sorted=False).indices
        chosen = chosen[flat[chosen] != 0]
        return torch.sort(chosen).values

    def encode(self, tensor: torch.Tensor) -> bytearray:
        flat = tensor.detach().reshape(-1)
        if flat.device.type != "cpu":
            flat = flat.cpu()
        return self.sparse.encode_positions(flat, self.positions(flat))

    def decode(self, data: memoryview | bytes | bytearray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        return self.sparse.decode(data, dtype, shape)

    def max_encoded_bytes(self, numel: int, dtype: torch.dtype) -> int:
        return self.sparse.max_encoded_bytes(numel, dtype)
