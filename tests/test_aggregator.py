import random
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from fedstream.common.wire.manifest import encode_state, layout_of
from fedstream.common.wire.framing import Crc32, iter_chunks
from fedstream.server.aggregation.aggregator import NonFiniteUpdateError, StreamingAggregator, federated_average, inspect_update
from fedstream.server.intake.spool import SpoolError, SpoolPool, SpoolWriter, StreamIntegrityError


def _state(gen: torch.Generator) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict([("fc.weight", torch.randn(33, 17, generator=gen)), ("fc.bias", torch.randn(33, generator=gen)),
                        ("emb", torch.randn(300, 8, generator=gen)), ("half", torch.randn(50, generator=gen).half())])


def spool(directory: Path, state, chunk: int, codec: str = "raw"):
    manifest, buffers = encode_state(state, codec)
    writer = SpoolWriter(SpoolPool(directory, idle_bytes=0), layout_of(manifest), manifest.total_bytes)
    crc = Crc32()
    for piece in iter_chunks(buffers, chunk):
        crc.update(piece)
        writer.write(piece)
    return writer.finish(crc.value, crc.nbytes)


def test_streaming_aggregator_equals_naive_weighted_mean(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    for trial in range(5):
        updates = [_state(gen) for _ in range(rng.randint(1, 7))]
        weights = [rng.randint(1, 500) for _ in updates]
        agg = StreamingAggregator(updates[0])
        for u, w in zip(updates, weights):
            sp = spool(tmp_path / str(trial), u, chunk=rng.randint(1, 5000))
            for _item, _start, _values in sp.pieces(slice_bytes=rng.choice([64, 1000, 1 << 20])):
                pass
            agg.add(sp, w)
        mean = agg.mean()
        total = sum(weights)
        for name in updates[0]:
            naive = sum(u[name].double() * w for u, w in zip(updates, weights)) / total
            assert torch.allclose(mean[name].double(), naive, atol=1e-6, rtol=1e-6), name


def test_slice_boundaries_do_not_change_the_result(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    u = _state(gen)
    sp = spool(tmp_path, u, chunk=777)
    results = []
    for slice_bytes in [4, 100, 4096, 1 << 22]:
        agg = StreamingAggregator(u)
        for item, start, values in sp.pieces(slice_bytes):
            agg.sums[item.name].view(-1)[start : start + values.numel()].add_(values.to(agg.sums[item.name].dtype))
        results.append(agg.sums)
    for r in results[1:]:
        assert all(torch.equal(r[k], results[0][k]) for k in r)


def test_federated_average_matches_reference() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor([2], dtype=torch.int64)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor([4], dtype=torch.int64)}
    out = federated_average([a, b], [1, 3])
    assert torch.allclose(out["w"], torch.tensor([2.5, 5.0]))
    assert out["n"].dtype == torch.int64 and out["n"].item() == 3
    with pytest.raises(ValueError, match="2 updates but 1 weights"):
        federated_average([a, b], [1])


def test_broken_or_corrupt_streams_never_become_updates(tmp_path: Path) -> None:
    u = _state(torch.Generator().manual_seed(2))
    manifest, buffers = encode_state(u, "raw")
    pieces = list(iter_chunks(buffers, 1000))
    writer = SpoolWriter(SpoolPool(tmp_path, idle_bytes=0), layout_of(manifest), manifest.total_bytes)
    for p in pieces[:-1]:
        writer.write(p)
    with pytest.raises(StreamIntegrityError, match="ended after"):
        writer.finish(0, manifest.total_bytes)
    assert not writer.path.exists()
    writer = SpoolWriter(SpoolPool(tmp_path, idle_bytes=0), layout_of(manifest), manifest.total_bytes)
    for p in pieces:
        writer.write(p)
    with pytest.raises(StreamIntegrityError, match="checksum mismatch"):
        writer.finish(12345, manifest.total_bytes)
    writer = SpoolWriter(SpoolPool(tmp_path, idle_bytes=0), layout_of(manifest), manifest.total_bytes)
    for p in pieces:
        writer.write(p)
    with pytest.raises(SpoolError, match="more than"):
        writer.write(b"x")


def test_nan_updates_are_detected_before_folding(tmp_path: Path) -> None:
    u = _state(torch.Generator().manual_seed(3))
    u["emb"][100, 3] = float("nan")
    with pytest.raises(NonFiniteUpdateError, match="emb"):
        inspect_update(spool(tmp_path, u, 4096))
    u["emb"][100, 3] = 0.0
    sq = inspect_update(spool(tmp_path, u, 4096))
    assert sq == pytest.approx(sum(float(t.double().square().sum()) for t in u.values()), rel=1e-7)  # float32 windows


def test_an_order_makes_the_sum_independent_of_arrival_order(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(2)
    keys = [f"client-{i}" for i in range(6)]
    spooled = {k: spool(tmp_path / k, _state(gen), chunk=999) for k in keys}
    weights = {k: 1 + 37 * i for i, k in enumerate(keys)}
    reference = _state(gen)
    delivered = keys[:-1]  # the last selected client never delivers
    arrivals = [delivered[::-1], [delivered[i] for i in (3, 0, 1, 4, 2)]]

    def run(arrival: list[str], ordered: bool) -> "OrderedDict[str, torch.Tensor]":
        agg = StreamingAggregator(reference, keys if ordered else None)
        for k in arrival:
            agg.add(spooled[k], weights[k], key=k)
        return OrderedDict((n, t.clone()) for n, t in agg.mean().items())

    ordered = [run(a, True) for a in arrivals + [delivered]]
    assert all(torch.equal(o[n], ordered[0][n]) for o in ordered[1:] for n in o)
    unordered = [run(a, False) for a in arrivals]
    assert any(not torch.equal(unordered[0][n], unordered[1][n]) for n in unordered[0]), \
        "arrival order should change float32 sums here, or this test proves nothing"
    for name, tensor in ordered[0].items():
        assert torch.allclose(tensor, unordered[0][name], atol=1e-6), name


def test_an_ordered_aggregator_refuses_strangers_and_repeats(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    state = _state(gen)
    agg = StreamingAggregator(state, ["a", "b"])
    agg.add(spool(tmp_path / "a", state, chunk=500), 1.0, key="a")
    with pytest.raises(ValueError, match="already added"):
        agg.add(spool(tmp_path / "a2", state, chunk=500), 1.0, key="a")
    with pytest.raises(ValueError, match="no place"):
        agg.add(spool(tmp_path / "c", state, chunk=500), 1.0, key="c")
