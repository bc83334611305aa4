"""Writes safetensors files straight from tensor memory and checksums them on the way out.

`safetensors.torch.save_file` builds the whole file in a buffer before writing it, and a checksum then has to
read the file back. Here each tensor's bytes go from its own storage to the file, and the CRC-32 is taken over
the same bytes as they are written: one pass, no model-sized copy. The format (8-byte little-endian header
length, a JSON header of dtype, shape and byte offsets, then the raw little-endian data) is read back by the
safetensors library itself, so files stay interchangeable. Dtypes the format has no name for here raise
ValueError, and callers fall back to save_file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Mapping

import torch

from fedstream.common.wire.framing import Crc32

DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
               torch.bool: "BOOL"}


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> str:
    """Writes tensors to path as safetensors; returns "<crc32 hex>:<length>" of the file written."""
    if sys.byteorder != "little":
        raise ValueError("write_safetensors writes the host's bytes; safetensors is little-endian")
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    views, offset = [], 0
    # Widest elements first, as save_file does: every tensor then starts at a multiple of its element size.
    for name, tensor in sorted(tensors.items(), key=lambda item: (-item[1].element_size(), item[0])):
        if tensor.dtype not in DTYPE_NAMES:
            raise ValueError(f"tensor {name} has dtype {tensor.dtype}, which write_safetensors does not name")
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        views.append(memoryview(data.numpy()))
        header[name] = {"dtype": DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + data.numel()]}
        offset += data.numel()
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    crc = Crc32()
    with open(path, "wb", buffering=0) as f:
        for piece in [len(text).to_bytes(8, "little"), text, *views]:
            crc.update(piece)
            written = 0
            while written < len(piece):
                written += f.write(piece[written:])
    return f"{crc.value:08x}:{crc.nbytes}"
