import pytest
import torch

from fedstream.common.codecs.registry import available_codecs, get_codec
from fedstream.common.wire.manifest import decode_state, encode_state
from fedstream.common.wire.tensors import DTYPES

ALL_DTYPES = list(DTYPES.values())


def _random(dtype: torch.dtype, shape=(7, 13)) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.rand(shape) > 0.5
    if dtype.is_floating_point:
        return torch.randn(shape).to(dtype)
    return torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape).to(dtype)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_raw_round_trip_is_exact_for_every_dtype(dtype: torch.dtype) -> None:
    for shape in [(), (0,), (1,), (7, 13), (2, 3, 4)]:
        t = _random(dtype, shape)
        codec = get_codec("raw")
        back = codec.decode(bytearray(codec.encode(t)), dtype, tuple(t.shape))
        assert back.dtype == dtype and back.shape == t.shape
        assert torch.equal(back, t)


def test_raw_encode_is_a_view_not_a_copy() -> None:
    t = torch.zeros(1000)
    view = get_codec("raw").encode(t)
    t[0] = 1.0
    assert bytes(view[:4]) == t[:1].numpy().tobytes()


@pytest.mark.parametrize("name,rel", [("fp16", 2 ** -10), ("bf16", 2 ** -7)])
def test_casts_stay_within_their_mantissa_bound(name: str, rel: float) -> None:
    t = torch.randn(10_000) * 3
    codec = get_codec(name)
    back = codec.decode(bytearray(codec.encode(t)), torch.float32, (10_000,))
    assert torch.all((back - t).abs() <= t.abs() * rel + 1e-7)


@pytest.mark.parametrize("codec", available_codecs())
def test_state_round_trip_through_manifest(codec: str) -> None:
    state = {"w": torch.randn(5, 4), "b": torch.randn(4), "steps": torch.tensor(3, dtype=torch.int64)}
    manifest, buffers = encode_state(state, codec)
    flat = bytearray(b"".join(bytes(b) for b in buffers))
    assert manifest.total_bytes == len(flat)
    back = decode_state(manifest, flat)
    assert list(back) == list(state)
    assert torch.equal(back["steps"], state["steps"])
    assert back["w"].shape == (5, 4)


def test_wrong_length_is_refused() -> None:
    from fedstream.common.codecs.registry import CodecError

    with pytest.raises(CodecError, match="needs 40 bytes"):
        get_codec("raw").decode(bytearray(36), torch.float32, (10,))
