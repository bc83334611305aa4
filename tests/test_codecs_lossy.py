"""Every compression codec round-trips within its stated bound, and manifests bound what peers announce."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch

from fedstream.client.feedback import ErrorFeedback
from fedstream.common.codecs import quantize
from fedstream.common.codecs.registry import CodecError, available_codecs, get_codec
from fedstream.common.codecs.plan import chooser, encode_tensors, masked_variant
from fedstream.common.wire.manifest import ManifestError, check_manifest, decode_state, reference_of
from fedstream.common.codecs.sparsify import BITMAP, DENSE, HEADER, INDEX32, TopKCodec

SHAPES = [(), (0,), (1,), (255,), (256,), (257,), (7, 13), (3, 300, 5)]
LZ4 = pytest.param("lz4", marks=pytest.mark.skipif("lz4" not in available_codecs(), reason="lz4 is not installed"))
LOSSLESS = ["sparse", "zstd", LZ4]


def round_trip(codec_name: str, tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    codec = get_codec(codec_name)
    data = codec.encode(tensor)
    return codec.decode(bytearray(data), dtype or tensor.dtype, tuple(tensor.shape))


def naive_block_scales(values: list[float], block: int) -> list[float]:
    return [max([abs(v) for v in values[i : i + block]]) / 127 for i in range(0, len(values), block)]


# ----- q8 --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_q8_error_per_element_is_below_its_block_scale(shape, dtype) -> None:
    t = (torch.randn(shape) * torch.logspace(-3, 2, math.prod(shape)).reshape(shape)).to(dtype)
    back = round_trip("q8", t)
    assert back.dtype == dtype and back.shape == t.shape
    flat, err = t.reshape(-1).double(), (back.double() - t.double()).reshape(-1)
    scales = naive_block_scales(flat.tolist(), quantize.BLOCK)
    for i, e in enumerate(err.tolist()):
        tolerance = 1e-6 * scales[i // quantize.BLOCK] + (1e-2 * abs(flat[i].item()) if dtype in (torch.float16, torch.bfloat16) else 0)
        assert abs(e) <= scales[i // quantize.BLOCK] * (1 + 1e-5) + tolerance, (i, e)


def test_q8_size_is_one_byte_per_value_plus_a_scale_per_block() -> None:
    codec = get_codec("q8")
    assert len(codec.encode(torch.randn(1000))) == 1000 + 4 * 4 == codec.exact_encoded_bytes(1000, torch.float32)


def test_q8_is_unbiased_over_many_encodings() -> None:
    """E[decode(encode(x))] = x: the mean over T encodings is within 6 standard errors of x, element by element."""
    x = torch.randn(512) * 3
    x[::7] = 0.0
    trials = 3000
    total = torch.zeros(512, dtype=torch.float64)
    codec = get_codec("q8")
    for _ in range(trials):
        total += codec.decode(bytearray(codec.encode(x)), torch.float32, (512,)).double()
    mean = total / trials
    scales = torch.tensor(naive_block_scales(x.tolist(), quantize.BLOCK), dtype=torch.float64).repeat_interleave(quantize.BLOCK)
    standard_error = scales / 2 / math.sqrt(trials)
    assert torch.all((mean - x.double()).abs() <= 6 * standard_error + 1e-9)
    rounded_to_nearest = torch.round(x.double() / scales) * scales
    assert (rounded_to_nearest - x.double()).abs().max() > 10 * standard_error.max()  # the test can tell bias apart


def test_q8_rounds_both_ways_and_keeps_zeros_and_extremes_exact() -> None:
    x = torch.tensor([1.0, 0.0, -1.0] + [0.5] * 253)
    seen = {round(float(v) * 127) for _ in range(50) for v in round_trip("q8", x)[3:]}
    assert seen == {63, 64}
    back = round_trip("q8", x)
    assert back[0] == 1.0 and back[1] == 0.0 and back[2] == -1.0


def test_q8_refuses_nan_and_corrupt_encodings() -> None:
    codec = get_codec("q8")
    with pytest.raises(CodecError, match="NaN or Inf"):
        codec.encode(torch.tensor([1.0, float("nan")]))
    data = bytearray(codec.encode(torch.randn(300)))
    with pytest.raises(CodecError, match="needs 308 bytes"):
        codec.decode(data[:-1], torch.float32, (300,))
    data[0:4] = bytes.fromhex("0000c0ff")  # a NaN scale
    with pytest.raises(CodecError, match="scale"):
        codec.decode(data, torch.float32, (300,))


def test_q8_seed_makes_encodings_repeatable() -> None:
    x = torch.randn(1000)
    quantize.seed(5)
    first = bytes(get_codec("q8").encode(x))
    quantize.seed(5)
    assert bytes(get_codec("q8").encode(x)) == first


# ----- top-k and sparse -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.1, 0.5, 1.0])
def test_topk_keeps_exactly_the_k_largest_magnitudes(fraction: float) -> None:
    n = 3000
    magnitudes = torch.randperm(n).double() + 1.0  # distinct, so the k largest are unambiguous
    t = (magnitudes * torch.where(torch.rand(n) < 0.5, -1.0, 1.0)).float().reshape(30, 100)
    codec = TopKCodec(fraction)
    back = codec.decode(bytearray(codec.encode(t)), torch.float32, (30, 100))
    k = math.ceil(fraction * n)
    ranked = sorted(range(n), key=lambda i: -abs(t.reshape(-1)[i].item()))
    expected = torch.zeros(n)
    for i in ranked[:k]:
        expected[i] = t.reshape(-1)[i]
    assert torch.equal(back.reshape(-1), expected)
    dropped = (t - back).abs()
    assert dropped.max() <= back[back != 0].abs().min() if k < n else dropped.max() == 0


def test_topk_never_sends_zeros_and_uses_index_positions_when_very_sparse() -> None:
    t = torch.zeros(10_000)
    t[[3, 500, 9999]] = torch.tensor([1.0, -2.0, 3.0])
    data = TopKCodec(0.01).encode(t)
    fmt, count = HEADER.unpack_from(data)
    assert (fmt, count) == (INDEX32, 3) and len(data) == HEADER.size + 3 * 8
    assert torch.equal(get_codec("topk").decode(bytearray(data), torch.float32, (10_000,)), t)


def test_topk_fraction_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        TopKCodec(0.0)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        TopKCodec(1.5)


@pytest.mark.parametrize("density,expected_format", [(1.0, DENSE), (0.3, BITMAP), (0.001, INDEX32)])
def test_sparse_is_exact_and_picks_the_smallest_layout(density: float, expected_format: int) -> None:
    t = torch.randn(200, 50)
    t[torch.rand(200, 50) >= density] = 0
    data = get_codec("sparse").encode(t)
    assert HEADER.unpack_from(data)[0] == expected_format
    assert len(data) <= HEADER.size + t.numel() * 4
    assert torch.equal(round_trip("sparse", t), t)


@pytest.mark.parametrize("name", ["sparse-q8", "sparse-fp16", "sparse-bf16"])
def test_lossy_sparse_keeps_zeros_exact_and_survivors_within_the_inner_bound(name: str) -> None:
    t = torch.randn(100, 60)
    t[torch.rand(100, 60) < 0.85] = 0
    back = round_trip(name, t)
    assert torch.equal(back[t == 0], t[t == 0])
    survivors, got = t[t != 0], back[t != 0]
    if name == "sparse-q8":
        scales = torch.tensor(naive_block_scales(survivors.tolist(), quantize.BLOCK)).repeat_interleave(quantize.BLOCK)
        assert torch.all((got - survivors).abs() <= scales[: survivors.numel()] * (1 + 1e-5))
    else:
        rel = 2 ** -10 if name == "sparse-fp16" else 2 ** -7
        assert torch.all((got - survivors).abs() <= survivors.abs() * rel + 1e-7)
    assert len(get_codec(name).encode(t)) < get_codec(name.split("-")[1]).max_encoded_bytes(t.numel(), torch.float32)


@pytest.mark.parametrize("name", LOSSLESS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_lossless_codecs_are_exact(name: str, shape, dtype) -> None:
    t = torch.randn(shape).to(dtype)
    if t.numel() > 4:
        t.reshape(-1)[::3] = 0
    back = round_trip(name, t)
    assert back.dtype == dtype and torch.equal(back, t)


@pytest.mark.parametrize("name", ["zstd", LZ4])
def test_byte_compression_shrinks_repetitive_tensors_and_stores_random_ones(name: str) -> None:
    codec = get_codec(name)
    repetitive = torch.zeros(100_000)
    repetitive[::100] = 1.0
    assert len(codec.encode(repetitive)) < 0.05 * 400_000
    noise = torch.randint(0, 256, (40_000,), dtype=torch.uint8).view(torch.float32)
    noise = torch.nan_to_num(noise)
    assert len(codec.encode(noise)) <= codec.max_encoded_bytes(noise.numel(), torch.float32)


@pytest.mark.parametrize("name,corrupt", [
    ("sparse", lambda d: d[:-1]),
    ("sparse", lambda d: d[:1] + (10 ** 9).to_bytes(8, "little") + d[9:]),
    ("topk", lambda d: d[:9] + d[13:17] + d[9:13] + d[17:]),
    ("zstd", lambda d: bytearray(b"\x01") + bytearray(b"garbage" * 20)),
    pytest.param("lz4", lambda d: bytearray(b"\x01") + bytearray(b"garbage" * 20), marks=LZ4.marks),
    ("zstd", lambda d: bytearray(b"\x07") + d[1:]),
])
def test_corrupt_encodings_are_refused(name, corrupt) -> None:
    t = torch.zeros(4000)
    t[[10, 20, 30, 40]] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    data = bytearray(TopKCodec(0.001).encode(t) if name == "topk" else get_codec(name).encode(t))
    with pytest.raises(CodecError):
        get_codec(name).decode(corrupt(data), torch.float32, (4000,))


# ----- manifests ------------------------------------------------------------------------------------------


def _state() -> "OrderedDict[str, torch.Tensor]":
    w = torch.randn(64, 32)
    w[torch.rand(64, 32) < 0.9] = 0
    return OrderedDict([("w", w), ("b", torch.randn(32)), ("steps", torch.tensor([3, 4]))])


@pytest.mark.parametrize("codec", ["q8", "topk", "sparse", "sparse-q8", "zstd", LZ4])
def test_check_manifest_accepts_real_encodings_and_refuses_inflated_lengths(codec: str) -> None:
    state = _state()
    manifest, buffers = encode_tensors(state, chooser(codec))
    layout = check_manifest(manifest, reference_of(state), {codec, "raw"}, "client 1", 1 << 30)
    assert [item.codec for item in layout] == [codec, codec, "raw"]
    back = decode_state(manifest, bytearray(b"".join(bytes(b) for b in buffers)))
    assert torch.equal(back["steps"], state["steps"])
    limit = get_codec(codec).max_encoded_bytes(64 * 32, torch.float32)
    manifest.tensors[0].byte_length = limit + 1
    manifest.total_bytes = sum(s.byte_length for s in manifest.tensors)
    with pytest.raises(ManifestError, match=f"more than {codec} allows" if codec != "q8" else "it must be"):
        check_manifest(manifest, reference_of(state), {codec, "raw"}, "client 1", 1 << 30)


def test_q8_manifest_must_announce_its_exact_length() -> None:
    state = _state()
    manifest, _ = encode_tensors(state, chooser("q8"))
    manifest.tensors[1].byte_length -= 1
    manifest.total_bytes -= 1
    with pytest.raises(ManifestError, match="it must be"):
        check_manifest(manifest, reference_of(state), {"q8", "raw"}, "client 1", 1 << 30)


def test_masked_tensors_take_the_sparse_variant_of_the_codec() -> None:
    assert [masked_variant(c) for c in ["raw", "zstd", "fp16", "q8", "topk"]] == ["sparse", "sparse", "sparse-fp16",
                                                                               "sparse-q8", "topk"]
    state = _state()
    manifest, _ = encode_tensors(state, chooser("q8", masked=["w"]))
    assert [s.codec for s in manifest.tensors] == ["sparse-q8", "q8", "raw"]
    assert manifest.tensors[0].byte_length < get_codec("q8").exact_encoded_bytes(64 * 32, torch.float32) / 2


# ----- error feedback -------------------------------------------------------------------------------------


def test_error_feedback_sends_every_coordinate_eventually() -> None:
    """Σ sent + final residual = Σ deltas (nothing is lost), and a constant delta is fully transmitted."""
    feedback = ErrorFeedback()
    choose = chooser("topk", topk_fraction=0.05)
    deltas = [OrderedDict(w=torch.randn(40, 25) * 0.01 + 0.02) for _ in range(30)]
    total_sent = torch.zeros(40, 25)
    for delta in deltas:
        encoded = feedback.encode(OrderedDict((k, v.clone()) for k, v in delta.items()), choose)
        spec = encoded.manifest.tensors[0]
        total_sent += get_codec(spec.codec).decode(bytearray(encoded.buffers[0]), torch.float32, (40, 25))
        assert spec.byte_length <= HEADER.size + 8 * 50
        feedback.commit(encoded)
    total_delta = sum(d["w"] for d in deltas)
    assert torch.allclose(total_sent + feedback.residual["w"], total_delta, atol=1e-5)
    assert (total_sent != 0).float().mean() > 0.9


def test_without_error_feedback_topk_drops_the_rest_for_good() -> None:
    feedback = ErrorFeedback(enabled=False)
    delta = OrderedDict(w=torch.linspace(0.1, 1.0, 1000))
    sent = torch.zeros(1000)
    for _ in range(10):
        encoded = feedback.encode(OrderedDict(w=delta["w"].clone()), chooser("topk", topk_fraction=0.01))
        sent += get_codec("topk").decode(bytearray(encoded.buffers[0]), torch.float32, (1000,))
        feedback.commit(encoded)
    assert int((sent != 0).sum()) == 10 and not feedback.residual


def test_error_feedback_is_kept_only_once_accepted_and_dropped_for_a_new_run() -> None:
    feedback = ErrorFeedback()
    feedback.bind("run-a", True)
    encoded = feedback.encode(OrderedDict(w=torch.arange(1.0, 101.0)), chooser("topk", topk_fraction=0.1))
    assert not feedback.residual
    feedback.commit(encoded)
    assert float(feedback.residual["w"].abs().max()) == 90.0
    feedback.bind("run-a", True)
    assert feedback.residual
    feedback.bind("run-b", True)
    assert not feedback.residual


def test_error_feedback_leaves_lossless_uploads_untouched_and_zero_copy() -> None:
    feedback = ErrorFeedback()
    delta = OrderedDict(w=torch.randn(10, 10), n=torch.tensor([1, 2]))
    encoded = feedback.encode(delta, chooser("raw"))
    assert not encoded.residual
    delta["w"][0, 0] = 123.0
    assert bytes(encoded.buffers[0][:4]) == delta["w"][0, :1].numpy().tobytes()


def test_error_feedback_zeroes_pruned_positions_of_the_residual() -> None:
    feedback = ErrorFeedback()
    feedback.residual = OrderedDict(w=torch.ones(100))
    mask = torch.arange(100) % 2 == 0
    encoded = feedback.encode(OrderedDict(w=torch.zeros(100)), chooser("q8", masked=["w"]), {"w": mask})
    sent = get_codec("sparse-q8").decode(bytearray(encoded.buffers[0]), torch.float32, (100,))
    assert torch.all(sent[~mask] == 0) and torch.all(sent[mask] != 0)
    assert torch.all(encoded.residual["w"][~mask] == 0)
