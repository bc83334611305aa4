"""The codec interface: how a tensor's values become bytes on the wire and back, and the exact codecs.

Every codec maps one tensor to one byte string and back; integer and boolean tensors always travel `raw`.
A codec states an error bound that the tests check: `raw` and lossless codecs are exact, casts lose the
mantissa bits of their target type, quantisers bound the error per element.
"""


from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from fedstream.common.wire.tensors import byte_view, from_bytes, numel_of


class CodecError(ValueError):
    """Encoded bytes that cannot be what the manifest says."""


class Codec(ABC):
    name: str = ""
    lossless: bool = False

    @abstractmethod
    def encode(self, tensor: torch.Tensor) -> memoryview | bytes:
        """Bytes for tensor (a view of its storage where possible)."""

    @abstractmethod
    def decode(self, data: memoryview | bytes | bytearray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        """The tensor back, in dtype and shape; raises CodecError when data cannot decode to that."""

    @abstractmethod
    def max_encoded_bytes(self, numel: int, dtype: torch.dtype) -> int:
        """Upper bound on the encoding's size: a stream that announces more is refused before it is read."""

    def exact_encoded_bytes(self, numel: int, dtype: torch.dtype) -> int | None:
        """The encoding's size when it depends only on numel and dtype (None for data-dependent codecs)."""
        return None


class RawCodec(Codec):
    name = "raw"
    lossless = True

    def encode(self, tensor: torch.Tensor) -> memoryview:
        return byte_view(tensor)

    def decode(self, data: memoryview | bytes | bytearray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        expected = self.max_encoded_bytes(numel_of(shape), dtype)
        if len(data) != expected:
            raise CodecError(f"raw tensor of shape {list(shape)} and {dtype} needs {expected} bytes, got {len(data)}")
        return from_bytes(data, dtype, shape)

    def max_encoded_bytes(self, numel: int, dtype: torch.dtype) -> int:
        return numel * torch.empty((), dtype=dtype).element_size()

    def exact_encoded_bytes(self, numel: int, dtype: torch.dtype) -> int:
        return self.max_encoded_bytes(numel, dtype)


class CastCodec(Codec):
    """Sends floating tensors in a narrower float type (fp16 keeps 10 mantissa bits, bf16 keeps 7)."""

    def __init__(self, name: str, wire_dtype: torch.dtype) -> None:
        self.name = name
        self.wire_dtype = wire_dtype

    def encode(self, tensor: torch.Tensor) -> memoryview:
        return byte_view(tensor.detach().to(self.wire_dtype))

    def decode(self, data: memoryview | bytes | bytearray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        expected = self.max_encoded_bytes(numel_of(shape), dtype)
        if len(data) != expected:
            raise CodecError(f"{self.name} tensor of shape {list(shape)} needs {expected} bytes, got {len(data)}")
        return from_bytes(data, self.wire_dtype, shape).to(dtype)

    def max_encoded_bytes(self, numel: int, dtype: torch.dtype) -> int:
        return numel * torch.empty((), dtype=self.wire_dtype).element_size()

    def exact_encoded_bytes(self, numel: int, dtype: torch.dtype) -> int:
        return self.max_encoded_bytes(numel, dtype)
