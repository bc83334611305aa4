import math
import random
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from fedstream.common.wire.manifest import encode_state, layout_of
from fedstream.server.aggregation.aggregator import NonFiniteUpdateError, inspect_update
from fedstream.server.intake.inspection import StreamInspection, square_sum
from tests.test_aggregator import spool


def _awkward_state(gen: torch.Generator) -> "OrderedDict[str, torch.Tensor]":
    """Odd-sized narrow tensors first, so wider tensors start at offsets that split their elements across chunks."""
    return OrderedDict([
        ("half", torch.randn(7, generator=gen).half()),
        ("flag", torch.tensor([True, False, True])),
        ("w", torch.randn(31, 9, generator=gen)),
        ("empty", torch.empty(0)),
        ("bf", torch.randn(5, generator=gen).bfloat16()),
        ("d", torch.randn(13, generator=gen).double()),
        ("steps", torch.tensor([3], dtype=torch.int64)),
    ])


def _exact_sq_norm(state) -> float:
    return sum(float(t.double().square().sum()) for t in state.values() if t.dtype.is_floating_point)


@pytest.mark.parametrize("chunk", [1, 3, 5, 64, 1000, 1 << 20])
def test_norm_while_streaming_matches_reading_back(tmp_path: Path, chunk: int) -> None:
    state = _awkward_state(torch.Generator().manual_seed(chunk))
    update = spool(tmp_path, state, chunk)
    assert update.inspection is not None
    assert {"half", "w", "bf", "d"} <= update.inspection.covered
    assert inspect_update(update) == pytest.approx(_exact_sq_norm(state), rel=1e-7)  # float32 windows
    streamed_only = sum(float(state[n].double().square().sum()) for n in ("half", "w", "bf", "d"))
    assert update.inspection.sq_norm == pytest.approx(streamed_only, rel=1e-7)


@pytest.mark.parametrize("where", [("half", 6), ("w", 0), ("w", 278), ("d", 12), ("bf", 2)])
def test_nan_anywhere_is_caught_at_any_chunking(tmp_path: Path, where: tuple[str, int]) -> None:
    rng = random.Random(hash(where) & 0xFFFF)
    state = _awkward_state(torch.Generator().manual_seed(5))
    name, index = where
    state[name].view(-1)[index] = float("nan") if rng.random() < 0.5 else float("inf")
    for chunk in (1, 2, 7, 4096):
        update = spool(tmp_path / str(chunk), state, chunk)
        with pytest.raises(NonFiniteUpdateError, match=f"tensor {name} "):
            inspect_update(update)


def test_feed_accepts_pieces_that_skip_non_float_tensors() -> None:
    state = _awkward_state(torch.Generator().manual_seed(9))
    manifest, buffers = encode_state(state, "raw")
    inspection = StreamInspection(layout_of(manifest))
    position = 0
    for buf in buffers:
        inspection.feed(position, buf)
        position += len(buf)
    covered = sum(float(state[n].double().square().sum()) for n in ("half", "w", "bf", "d"))
    assert inspection.sq_norm == pytest.approx(covered, rel=1e-7)
    assert inspection.nonfinite is None


def test_pieces_reuse_one_buffer_but_yield_the_right_values(tmp_path: Path) -> None:
    state = _awkward_state(torch.Generator().manual_seed(2))
    update = spool(tmp_path, state, 100)
    for slice_bytes in (4, 24, 1 << 20):
        seen: dict[str, list[torch.Tensor]] = {}
        for item, start, values in update.pieces(slice_bytes):
            assert values.dtype == item.dtype
            seen.setdefault(item.name, []).append((start, values.clone()))
        for name, tensor in state.items():
            parts = sorted(seen[name], key=lambda p: p[0])
            got = torch.cat([v for _, v in parts]) if parts else torch.empty(0, dtype=tensor.dtype)
            assert torch.equal(got, tensor.reshape(-1)), (name, slice_bytes)


def test_square_sum_flags_only_real_non_finite_values() -> None:
    huge = torch.full((4,), 3e19)  # finite, but its squares overflow float32
    assert square_sum(huge) == pytest.approx(4 * 9e38, rel=1e-6)
    for bad in (float("nan"), float("inf"), float("-inf")):
        values = torch.ones(1000)
        values[517] = bad
        assert not math.isfinite(square_sum(values))
        assert not math.isfinite(square_sum(values.half()))


def test_square_sum_of_a_large_tensor_is_close_to_float64() -> None:
    values = torch.randn(3_000_000, generator=torch.Generator().manual_seed(1)) * 1e-3
    assert square_sum(values) == pytest.approx(float(values.double().square().sum()), rel=1e-7)
