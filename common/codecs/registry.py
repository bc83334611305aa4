"""Tensor codecs chosen by name: the one registry (`--upload-codec`, `--download-codec`, manifests).

Adding a codec is one module beside this one and one `register` line below.
"""

from __future__ import annotations

import torch

from fedstream.common.codecs.base import CastCodec, Codec, CodecError, RawCodec
from fedstream.common.codecs.compress import lz4_codec, zstd_codec
from fedstream.common.codecs.quantize import Q8Codec
from fedstream.common.codecs.sparsify import SparseCodec, TopKCodec

__all__ = ["Codec", "CodecError", "RAW", "available_codecs", "codec_for", "get_codec", "register"]

_REGISTRY: dict[str, Codec] = {}


def register(codec: Codec) -> Codec:
    _REGISTRY[codec.name] = codec
    return codec


def get_codec(name: str) -> Codec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; available: {', '.join(available_codecs())}") from None


def available_codecs() -> list[str]:
    return list(_REGISTRY)


def codec_for(tensor_dtype: torch.dtype, requested: str) -> Codec:
    """The codec a tensor of this dtype travels with: lossy codecs apply to floating tensors only."""
    if not tensor_dtype.is_floating_point:
        return RAW
    return get_codec(requested)


RAW = register(RawCodec())
register(CastCodec("fp16", torch.float16))
register(CastCodec("bf16", torch.bfloat16))

Q8 = register(Q8Codec())
register(TopKCodec())
register(SparseCodec("sparse", RAW))
register(SparseCodec("sparse-fp16", get_codec("fp16")))
register(SparseCodec("sparse-bf16", get_codec("bf16")))
register(SparseCodec("sparse-q8", Q8))
register(zstd_codec())
if (_lz4 := lz4_codec()) is not None:
    register(_lz4)
