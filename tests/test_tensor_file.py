"""write_safetensors: files the safetensors library reads back bit for bit, with the CRC taken while writing."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from fedstream.common.tensor_file import DTYPE_NAMES, write_safetensors
from fedstream.common.wire import Crc32


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
    assert list(loaded) == sorted(tensors) or set(loaded) == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape, name
        assert torch.equal(loaded[name], tensor), name
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"round": "3"}
    crc = Crc32()
    crc.update(path.read_bytes())
    assert digest == f"{crc.value:08x}:{crc.nbytes}"


def test_a_dtype_without_a_safetensors_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="complex64"):
        write_safetensors(tmp_path / "c.safetensors", {"z": torch.zeros(2, dtype=torch.complex64)})
