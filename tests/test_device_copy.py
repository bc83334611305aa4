from collections import OrderedDict

import pytest
import torch
from torch import nn

from fedstream.client.device_copy import delta_into, host_buffer, load_state
from fedstream.common.wire.manifest import decode_state, encode_state


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.bn = nn.BatchNorm1d(3)


def _received(state) -> "OrderedDict[str, torch.Tensor]":
    """state as a client holds it after a download: views into one host buffer."""
    manifest, buffers = encode_state(state, "raw")
    buffer = host_buffer(manifest.total_bytes, pin=torch.cuda.is_available())
    view = memoryview(buffer.numpy())
    pos = 0
    for b in buffers:
        n = len(memoryview(b).cast("B"))
        view[pos : pos + n] = memoryview(b).cast("B")
        pos += n
    return decode_state(manifest, view)


def test_host_buffer_falls_back_to_pageable_memory_without_a_gpu() -> None:
    buf = host_buffer(1000, pin=True)
    assert buf.dtype == torch.uint8 and buf.numel() == 1000
    assert buf.is_pinned() == torch.cuda.is_available()
    assert host_buffer(0).numel() == 0


def _delta_check(device: str) -> None:
    torch.manual_seed(0)
    model = _Net().to(device)
    global_state = OrderedDict((k, v.detach().cpu().clone()) for k, v in model.state_dict().items())
    received = _received(global_state)
    load_state(model, received)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor.cpu(), global_state[name]), name
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model.bn.num_batches_tracked += 3
    local = OrderedDict((k, v.detach().cpu().clone()) for k, v in model.state_dict().items())
    storage = {k: v.data_ptr() for k, v in received.items()}
    delta = delta_into(received, model.state_dict())
    for name in global_state:
        assert delta[name].data_ptr() == storage[name], f"{name} was not written in place"
        assert torch.allclose(delta[name], local[name] - global_state[name]), name
    assert delta["bn.num_batches_tracked"].item() == 3


def test_delta_on_cpu_is_written_over_the_received_buffer() -> None:
    _delta_check("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_delta_on_gpu_comes_back_through_pinned_memory() -> None:
    _delta_check("cuda")


def test_load_state_refuses_a_mismatched_shape_like_load_state_dict() -> None:
    model = _Net()
    bad = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
    bad["fc.weight"] = torch.zeros(3, 5)
    with pytest.raises((RuntimeError, ValueError), match="fc.weight"):
        load_state(model, bad)


def test_a_spare_download_buffer_is_reused_only_when_it_fits() -> None:
    from fedstream.client.transfer import _buffer

    spare = torch.empty(1000, dtype=torch.uint8)
    reused = _buffer(600, False, spare)
    assert reused.numel() == 600 and reused.data_ptr() == spare.data_ptr()
    assert _buffer(1001, False, spare).data_ptr() != spare.data_ptr(), "too small: a fresh buffer is needed"
    assert _buffer(10, False, None).numel() == 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tensors_decoded_from_a_pinned_download_are_pinned_so_copies_to_the_gpu_do_not_block() -> None:
    """load_state and delta_into copy asynchronously only from pinned tensors; decode_state's views must count."""
    received = _received(OrderedDict((k, v.detach().clone()) for k, v in _Net().state_dict().items()))
    assert all(t.is_pinned() for t in received.values())
