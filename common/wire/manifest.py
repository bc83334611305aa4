"""Manifests: what a tensor stream holds, built from a state dict and checked against the global model."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch

from fedstream.common.codecs.registry import CodecError, codec_for, get_codec
from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.wire.tensors import dtype_from_name, dtype_name, numel_of


class ManifestError(ValueError):
    """A manifest that does not describe the global model; the message says what differs."""


@dataclass(frozen=True)
class TensorLayout:
    """Where one tensor's encoded bytes sit in a flat stream."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    codec: str
    offset: int
    nbytes: int


def encode_state(state: Mapping[str, torch.Tensor], codec: str) -> tuple[pb.Manifest, list[memoryview | bytes]]:
    """Manifest and per-tensor encoded buffers (raw buffers are views of the tensors, not copies)."""
    specs, buffers, total = [], [], 0
    for name, tensor in state.items():
        chosen = codec_for(tensor.dtype, codec)
        data = chosen.encode(tensor)
        nbytes = len(data) if not isinstance(data, memoryview) else data.nbytes
        specs.append(pb.TensorSpec(name=name, dtype=dtype_name(tensor.dtype), shape=list(tensor.shape),
                                   codec=chosen.name, byte_length=nbytes))
        buffers.append(data)
        total += nbytes
    return pb.Manifest(tensors=specs, total_bytes=total), buffers


def layout_of(manifest: pb.Manifest) -> list[TensorLayout]:
    out, offset = [], 0
    for spec in manifest.tensors:
        out.append(TensorLayout(spec.name, dtype_from_name(spec.dtype), tuple(int(s) for s in spec.shape),
                                spec.codec, offset, int(spec.byte_length)))
        offset += int(spec.byte_length)
    return out


def decode_state(manifest: pb.Manifest, data: bytearray | memoryview) -> "OrderedDict[str, torch.Tensor]":
    """Tensors from a flat received buffer; raw tensors are views into it."""
    view = memoryview(data)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for item in layout_of(manifest):
        codec = get_codec(item.codec)
        try:
            out[item.name] = codec.decode(view[item.offset : item.offset + item.nbytes], item.dtype, item.shape)
        except CodecError as exc:
            raise ManifestError(f"tensor {item.name}: {exc}") from None
    return out


def check_manifest(
    manifest: pb.Manifest,
    reference: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
    allowed_codecs: Iterable[str],
    who: str,
    max_bytes: int,
    holder: str = "the global model",
    receiver: str = "this server",
    what: str = "update",
) -> list[TensorLayout]:
    """Validates an incoming manifest against the reference's names, dtypes and shapes, before any allocation.

    Raises ManifestError naming the sender, the tensor, what it sent and what the holder (the server's global
    model, or a client's own model for a download) has.
    """
    allowed = set(allowed_codecs)
    seen: set[str] = set()
    total = 0
    for spec in manifest.tensors:
        if spec.name in seen:
            raise ManifestError(f"{who} sent tensor {spec.name} twice")
        seen.add(spec.name)
        if spec.name not in reference:
            raise ManifestError(f"{who} sent unknown tensor {spec.name!r}; {holder} has no such tensor")
        dtype, shape = reference[spec.name]
        if spec.dtype != dtype_name(dtype):
            raise ManifestError(f"{who} sent dtype {spec.dtype} for {spec.name}; {holder} has {dtype_name(dtype)}")
        if tuple(spec.shape) != shape:
            raise ManifestError(
                f"{who} sent shape {list(spec.shape)} for {spec.name}; {holder} has {list(shape)}"
            )
        if spec.codec not in allowed and not (spec.codec == "raw" and not dtype.is_floating_point):
            raise ManifestError(f"{who} used codec {spec.codec!r} for {spec.name}; this session allows {sorted(allowed)}")
        try:
            codec = get_codec(spec.codec)
        except ValueError as exc:
            raise ManifestError(f"{who}: {exc}") from None
        numel = numel_of(shape)
        exact = codec.exact_encoded_bytes(numel, dtype)
        if exact is not None and spec.byte_length != exact:
            raise ManifestError(
                f"{who} announced {spec.byte_length} bytes for {spec.name} ({spec.codec}); it must be {exact}"
            )
        if not 0 <= spec.byte_length <= codec.max_encoded_bytes(numel, dtype):
            raise ManifestError(f"{who} announced {spec.byte_length} bytes for {spec.name}, more than {spec.codec} allows")
        total += spec.byte_length
    missing = [name for name in reference if name not in seen]
    if missing:
        raise ManifestError(f"{who} left out {len(missing)} tensor(s) of {holder}, e.g. {missing[0]}")
    if manifest.total_bytes != total:
        raise ManifestError(f"{who} announced total_bytes={manifest.total_bytes}; its tensors add up to {total}")
    if total > max_bytes:
        raise ManifestError(f"{who} announced a {total}-byte {what}; {receiver} accepts at most {max_bytes} bytes")
    return layout_of(manifest)


def reference_of(state: Mapping[str, torch.Tensor]) -> "OrderedDict[str, tuple[torch.dtype, tuple[int, ...]]]":
    return OrderedDict((k, (v.dtype, tuple(v.shape))) for k, v in state.items())
