"""write_safetensors: files the safetensors library reads back bit for bit, with the CRC taken while writing."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fedstream.common.wire.tensor_file import DTYPE_NAMES, write_safetensors
from fedstream.common.wire.framing import Crc32


def test_every_named_dtype_shape_and_layout_round_trips_through_the_safetensors_library(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    tensors: OrderedDict[str, torch.Tensor] = OrderedDict()
    for dtype in DTYPE_NAMES:
        if dtype.is_floating_point:
            tensors[f"t.{dtype}"] = torch.randn(3, 5, generator=gen).to(dtype)
        elif dtype == torch.bool:
            tensors[f"t.{dtype}"] = torch.rand(7, generator=gen) > 0.5
        else:
            tensors[f"t.{dtype}"] = torch.randint(-100 if dtype != torch.uint8 else 0, 100, (4, 2), generator=gen).to(dtype)
    tensors["scalar"] = torch.tensor(3.5)
    tensors["empty"] = torch.zeros(0, 4)
    tensors["transposed"] = torch.randn(6, 3, generator=gen).t()
    path = tmp_path / "x.safetensors"
    digest = write_safetensors(path, tensors, {"round": "3"})
    loaded = load_file(str(path))
    assert set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape, name
        assert torch.equal(loaded[name], tensor), name
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"round": "3"}
    crc = Crc32()
    crc.update(path.read_bytes())
    assert digest == f"{crc.value:08x}:{crc.nbytes}"
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    for name, tensor in tensors.items():
        assert header[name]["data_offsets"][0] % tensor.element_size() == 0, f"{name} is not aligned"


def test_a_checkpoint_of_a_dtype_without_a_safetensors_name_falls_back_to_save_file(tmp_path: Path) -> None:
    from fedstream.server.publication.checkpoint import _write_tensors

    path = tmp_path / "z.safetensors"
    tensors = {"z": torch.tensor([1 + 2j], dtype=torch.complex64), "w": torch.ones(3)}
    try:
        digest = _write_tensors(path, tensors)
    except Exception as exc:  # safetensors itself may not store complex numbers
        pytest.skip(f"safetensors cannot store complex64 either: {exc}")
    crc = Crc32()
    crc.update(path.read_bytes())
    assert digest == f"{crc.value:08x}:{crc.nbytes}"
    assert torch.equal(load_file(str(path))["z"], tensors["z"])


def test_a_dtype_without_a_safetensors_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="complex64"):
        write_safetensors(tmp_path / "c.safetensors", {"z": torch.zeros(2, dtype=torch.complex64)})
