"""Which codec each tensor of a state travels with, and the task options that tell clients how to compress.

The negotiated codec applies to floating tensors; integer tensors travel raw; pruned (masked) tensors take the
sparse variant of the codec so that their structural zeros cost no value bytes; `topk` takes the fraction the
server chose. Both ends build manifests through `encode_tensors` with such a plan.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch

from fedstream.common.codecs.registry import RAW, Codec, available_codecs, get_codec
from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.codecs.sparsify import DEFAULT_TOPK_FRACTION, SparseCodec, TopKCodec
from fedstream.common.wire.tensors import dtype_name

# Keys of TrainConfig.options through which the server tells clients how to compress their uploads.
TOPK_FRACTION = "topk_fraction"
ERROR_FEEDBACK = "error_feedback"
INCREMENTAL = "incremental"

Chooser = Callable[[str, torch.Tensor], Codec]


def masked_variant(codec: str) -> str:
    """The codec a pruned tensor travels with when `codec` is negotiated: one that skips structural zeros."""
    chosen = get_codec(codec)
    if isinstance(chosen, (SparseCodec, TopKCodec)):
        return chosen.name
    if chosen.lossless:
        return "sparse"
    candidate = f"sparse-{chosen.name}"
    return candidate if candidate in available_codecs() else chosen.name


def lossless_variant(codec: str) -> str:
    """`codec` when it is exact, raw otherwise (full downloads that clients build differences on)."""
    return codec if get_codec(codec).lossless else "raw"


def accepted_codecs(codec: str) -> set[str]:
    """What a peer that negotiated `codec` may send: it, raw, and its variant for pruned tensors."""
    return {codec, "raw", masked_variant(codec)}


def instance(codec: str, topk_fraction: float | None = None) -> Codec:
    """The codec object for a name; `topk` with the given fraction."""
    if codec == "topk" and topk_fraction is not None:
        return TopKCodec(topk_fraction)
    return get_codec(codec)


def chooser(codec: str, masked: Iterable[str] = (), topk_fraction: float | None = None) -> Chooser:
    """Per-tensor codec choice: raw for integers, the sparse variant for masked tensors, else `codec`."""
    masked = set(masked)
    main = instance(codec, topk_fraction)
    sparse = instance(masked_variant(codec), topk_fraction)

    def choose(name: str, tensor: torch.Tensor) -> Codec:
        if not tensor.dtype.is_floating_point:
            return RAW
        return sparse if name in masked else main

    return choose


def tensor_spec(name: str, tensor: torch.Tensor, codec: Codec, data: memoryview | bytes | bytearray) -> pb.TensorSpec:
    """The manifest entry of one encoded tensor."""
    nbytes = data.nbytes if isinstance(data, memoryview) else len(data)
    return pb.TensorSpec(name=name, dtype=dtype_name(tensor.dtype), shape=list(tensor.shape), codec=codec.name,
                         byte_length=nbytes)


def manifest_of(specs: list[pb.TensorSpec]) -> pb.Manifest:
    return pb.Manifest(tensors=specs, total_bytes=sum(spec.byte_length for spec in specs))


def encode_tensors(state: Mapping[str, torch.Tensor], choose: Chooser) -> tuple[pb.Manifest, list]:
    """Manifest and per-tensor encoded buffers, each tensor in the codec `choose` names for it."""
    specs, buffers = [], []
    for name, tensor in state.items():
        codec = choose(name, tensor)
        data = codec.encode(tensor)
        specs.append(tensor_spec(name, tensor, codec, data))
        buffers.append(data)
    return manifest_of(specs), buffers


def topk_fraction_of(options: Mapping[str, str]) -> float:
    """The top-k fraction a task's options name (the codec's default when absent)."""
    text = options.get(TOPK_FRACTION, "")
    try:
        return float(text) if text else DEFAULT_TOPK_FRACTION
    except ValueError:
        raise ValueError(f"task option {TOPK_FRACTION}={text!r} is not a number; expected a fraction in (0, 1]") from None


def compression_options(upload_codec: str, topk_fraction: float, error_feedback: bool,
                        incremental: bool) -> dict[str, str]:
    """Task options a server sends so that clients compress uploads and keep copies the way it expects."""
    options: dict[str, str] = {}
    if upload_codec == "topk":
        options[TOPK_FRACTION] = repr(float(topk_fraction))
    if not get_codec(upload_codec).lossless:
        options[ERROR_FEEDBACK] = "1" if error_feedback else "0"
    if incremental:
        options[INCREMENTAL] = "1"
    return options
