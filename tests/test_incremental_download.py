"""Incremental downloads: clients following the versions hold exactly the served model, lossy error does not
accumulate, and anything the server cannot diff against gets the full model."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from fedstream.client.held_model import HeldModel, delta_from
from fedstream.client.transfer import Downloaded
from fedstream.common.wire.manifest import decode_state
from fedstream.common.training.pruning import prune
from fedstream.common.wire.tensors import state_nbytes
from fedstream.server.publication.publisher import ModelPublisher, Served


def model(gen: torch.Generator) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict(w=torch.randn(64, 48, generator=gen), b=torch.randn(48, generator=gen),
                       steps=torch.tensor([7], dtype=torch.int64), flags=torch.tensor([True, False]))


def next_version(state, gen: torch.Generator, scale: float = 0.01):
    def step(v: torch.Tensor) -> torch.Tensor:
        if v.dtype == torch.bool:
            return ~v
        return v + (torch.randn(v.shape, generator=gen) * scale if v.dtype.is_floating_point else 1)

    return OrderedDict((k, step(v)) for k, v in state.items())


def received(served: Served, version: int) -> Downloaded:
    """What transfer.download returns for these bytes (decoded from the flat stream, as on the wire)."""
    flat = bytearray(b"".join(bytes(b) for b in served.buffers))
    return Downloaded(version, decode_state(served.manifest, flat), len(flat), [], served.incremental,
                      served.base_version)


def follow(publisher: ModelPublisher, held: HeldModel, version: int) -> tuple[Served, OrderedDict]:
    served = publisher.serve(version, held.have_version("run"))
    state, _ = held.receive(received(served, version), "run", True, lambda: pytest.fail("no refetch expected"))
    return served, state


@pytest.mark.parametrize("codec", ["raw", "zstd", "fp16", "q8"])
def test_clients_following_versions_hold_exactly_the_served_model(codec: str) -> None:
    gen = torch.Generator().manual_seed(0)
    publisher, held = ModelPublisher(codec, incremental=True), HeldModel()
    state = model(gen)
    publisher.publish(0, state)
    first, _ = follow(publisher, held, 0)
    assert not first.incremental and {s.codec for s in first.manifest.tensors} <= {"raw", codec}
    assert all(s.codec == "raw" or codec in ("raw", "zstd") for s in first.manifest.tensors), "full is lossless"
    for version in range(1, 8):
        state = next_version(state, gen)
        publisher.publish(version, state)
        served, got = follow(publisher, held, version)
        assert served.incremental == (version >= 2) and served.base_version == (version - 1 if version >= 2 else 0)
        for name, tensor in publisher.served_state.items():
            assert torch.equal(got[name], tensor), (version, name)
        assert torch.equal(got["steps"], state["steps"]) and torch.equal(got["flags"], state["flags"])
        if codec in ("q8", "fp16") and version >= 2:
            assert served.manifest.total_bytes < 0.6 * state_nbytes(state)


def test_lossy_difference_error_does_not_accumulate_over_versions() -> None:
    """Served − true stays within one step's quantisation error; re-encoding each diff on its own would drift."""
    gen = torch.Generator().manual_seed(1)
    publisher = ModelPublisher("q8", incremental=True)
    state = model(gen)
    publisher.publish(0, state)
    naive = OrderedDict((k, v.clone()) for k, v in state.items())
    from fedstream.common.codecs.registry import get_codec
    q8 = get_codec("q8")
    errors = []
    for version in range(1, 41):
        new = next_version(state, gen, scale=0.05)
        step = new["w"] - state["w"]
        naive["w"] += q8.decode(bytearray(q8.encode(step)), torch.float32, tuple(step.shape))
        state = new
        publisher.publish(version, state)
        errors.append(float((publisher.served_state["w"] - state["w"]).abs().max()))
    one_step_bound = 2 * 0.05 * 5 / 127  # |diff| ≲ 2 steps of 5σ, quantised with scale max/127
    assert max(errors) <= one_step_bound
    assert float((naive["w"] - state["w"]).abs().max()) > max(errors)


def test_topk_difference_carries_what_it_dropped_into_the_next_version() -> None:
    gen = torch.Generator().manual_seed(2)
    publisher, held = ModelPublisher("topk", incremental=True, topk_fraction=0.05), HeldModel()
    start = model(gen)
    publisher.publish(0, start)
    follow(publisher, held, 0)
    target = next_version(start, gen, scale=0.1)
    for version in range(1, 60):  # the true model stops moving; the served one converges to it
        publisher.publish(version, target)
        served, got = follow(publisher, held, version)
        assert version == 1 or served.manifest.tensors[0].byte_length <= 9 + 8 * int(0.05 * 64 * 48 + 1)
    assert torch.allclose(got["w"], target["w"], atol=1e-6)


def test_fallback_to_the_full_model() -> None:
    gen = torch.Generator().manual_seed(3)
    publisher = ModelPublisher("q8", incremental=True)
    state = model(gen)
    publisher.publish(0, state)
    state = next_version(state, gen)
    publisher.publish(1, state)
    state = next_version(state, gen)
    publisher.publish(2, state)
    assert publisher.serve(2, 1).incremental
    for have in (0, 2, 3, 5):  # nothing, the current version, unknown versions, an older one
        assert not publisher.serve(2, have).incremental
    assert publisher.serve(2, 0).manifest.total_bytes == state_nbytes(state)
    assert publisher.round_metrics() == {"downloads_full": 5, "downloads_incremental": 1}

    restarted = ModelPublisher("q8", incremental=True)
    restarted.publish(2, state)
    assert not restarted.serve(2, 1).incremental
    with pytest.raises(ValueError, match="not published"):
        restarted.serve(1, 0)


def test_versions_whose_masks_changed_are_served_in_full_with_exact_sparse_masks() -> None:
    gen = torch.Generator().manual_seed(4)
    publisher = ModelPublisher("q8", incremental=True)
    state = model(gen)
    publisher.publish(0, state)
    pruned = next_version(state, gen)
    prune(pruned, 0.8, names=["w"])
    publisher.publish(1, pruned, masked=["w"], masks_changed=True)
    full = publisher.serve(1, 0)
    assert not publisher.serve(1, 0).incremental and publisher.serve(1, 0).manifest.tensors[0].codec == "sparse"
    assert full.manifest.tensors[0].byte_length < 0.4 * 64 * 48 * 4
    nxt = next_version(pruned, gen)
    nxt["w"] = nxt["w"].masked_fill(pruned["w"] == 0, 0)
    publisher.publish(2, nxt, masked=["w"])
    diff = publisher.serve(2, 1)
    assert diff.incremental and diff.manifest.tensors[0].codec == "sparse-q8"
    held = HeldModel()
    held.keep("run", 1, received(full, 1).state)
    got, _ = held.receive(received(diff, 2), "run", True, lambda: pytest.fail("no refetch expected"))
    assert torch.equal(got["w"] == 0, pruned["w"] == 0)
    assert torch.equal(got["w"], publisher.served_state["w"])


def test_without_incremental_the_full_model_uses_the_download_codec_and_nothing_is_kept() -> None:
    gen = torch.Generator().manual_seed(5)
    publisher = ModelPublisher("q8")
    state = model(gen)
    publisher.publish(0, state)
    publisher.publish(1, next_version(state, gen))
    served = publisher.serve(1, 0)
    assert not served.incremental and [s.codec for s in served.manifest.tensors] == ["q8", "q8", "raw", "raw"]
    assert publisher.served_state is not None and publisher.round_metrics() == {}
    held = HeldModel()
    held.receive(received(served, 1), "run", False, lambda: pytest.fail("no refetch expected"))
    assert held.have_version("run") == 0


def test_a_difference_that_does_not_fit_the_held_copy_is_fetched_again_in_full() -> None:
    gen = torch.Generator().manual_seed(6)
    publisher = ModelPublisher("raw", incremental=True)
    state = model(gen)
    publisher.publish(0, state)
    state = next_version(state, gen)
    publisher.publish(1, state)
    held = HeldModel()
    held.keep("other-run", 0, model(gen))
    refetched = []

    def refetch() -> Downloaded:
        refetched.append(1)
        return received(publisher.serve(1, 0), 1)

    got, _ = held.receive(received(publisher.serve(1, 0), 1), "run", True, refetch)
    assert not refetched
    diff = received(publisher.serve(1, 0), 1)
    diff.incremental, diff.base_version = True, 0
    got, _ = held.receive(diff, "other", True, refetch)
    assert refetched and held.version == 1 and torch.equal(got["w"], publisher.served_state["w"])


def test_delta_from_leaves_the_held_copy_intact() -> None:
    base = OrderedDict(w=torch.ones(3), n=torch.tensor([2]))
    local = OrderedDict(w=torch.full((3,), 1.5), n=torch.tensor([5]))
    delta = delta_from(base, local)
    delta["w"].add_(100)
    assert base["w"].tolist() == [1.0, 1.0, 1.0] and delta["n"].tolist() == [3]
