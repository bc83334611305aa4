"""Units of the client's checks on server answers: honest values pass unchanged, pacing is floored and clamped."""

from __future__ import annotations

import pytest
import torch

from fedstream.client.connection import WaitPacer
from fedstream.client.server_checks import (BadAnswer, BadAnswerCounter, ClientLimits, ModelExpectation,
                                            ServerUntrusted, check_join_reply, check_task, loggable, torch_seed)
from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.wire.manifest import encode_state, reference_of
from fedstream.common.wire.protocol import PROTOCOL_VERSION


def honest_join() -> pb.JoinReply:
    return pb.JoinReply(session_id="abc", protocol_version=PROTOCOL_VERSION, upload_codec="q8", heartbeat_seconds=5,
                        run_id="r1", chunk_bytes=1 << 20, upload_admission=True)


def test_an_honest_join_reply_passes_unchanged() -> None:
    reply = honest_join()
    assert check_join_reply(reply, ["raw", "q8"]) == reply


@pytest.mark.parametrize("field,value,clamped", [("heartbeat_seconds", 0, 1), ("heartbeat_seconds", 10 ** 9, 600),
                                                 ("chunk_bytes", 0, 4096), ("chunk_bytes", 1, 4096),
                                                 ("chunk_bytes", 2 ** 32 - 1, 64 << 20)])
def test_pacing_values_are_clamped(field: str, value: int, clamped: int) -> None:
    reply = honest_join()
    setattr(reply, field, value)
    assert getattr(check_join_reply(reply, ["raw", "q8"]), field) == clamped


def test_an_upload_codec_the_client_did_not_offer_is_refused_with_the_list() -> None:
    with pytest.raises(BadAnswer, match=r"JoinReply.upload_codec = 'q8': this client encodes raw, zstd"):
        check_join_reply(honest_join(), ["raw", "zstd"])


def test_honest_tasks_pass() -> None:
    limits = ClientLimits()
    config = pb.TrainConfig(local_epochs=100, batch_size=32, learning_rate=0.05, proximal_mu=0.01)
    config.options.update({"seed": str(2 ** 40 * 1_000_003), "slowdown": "5", "topk_fraction": "0.01"})
    for kind in (pb.Task.TRAIN, pb.Task.EVALUATE, pb.Task.WAIT, pb.Task.FINISH):
        check_task(pb.Task(kind=kind, config=config), limits, None)


def test_the_clients_own_epochs_override_the_bound() -> None:
    task = pb.Task(kind=pb.Task.TRAIN, config=pb.TrainConfig(local_epochs=10 ** 9))
    with pytest.raises(BadAnswer, match="--max-local-epochs 100"):
        check_task(task, ClientLimits(), None)
    check_task(task, ClientLimits(), 2)


def test_seeds_fold_into_torchs_range_without_changing_small_ones() -> None:
    assert torch_seed(12345, 3) == 12345 * 7919 + 3
    assert torch_seed(-5, 0) == -5 * 7919
    big = torch_seed(2 ** 62, 1)
    assert 0 <= big < 2 ** 64
    torch.manual_seed(big)


def test_header_for_another_version_or_model_is_refused() -> None:
    state = {"w": torch.zeros(3, 2), "b": torch.zeros(2)}
    manifest, _ = encode_state(state, "raw")
    expect = ModelExpectation(reference_of(state), ["raw"], max_bytes=1000)
    expect.check_header(pb.ModelHeader(version=4, manifest=manifest), 4, 0)
    with pytest.raises(BadAnswer, match="ModelHeader.version = 5"):
        expect.check_header(pb.ModelHeader(version=5, manifest=manifest), 4, 0)
    with pytest.raises(BadAnswer, match="ModelHeader.base_version"):
        expect.check_header(pb.ModelHeader(version=4, manifest=manifest, incremental=True, base_version=2), 4, 3)
    small = ModelExpectation(reference_of(state), ["raw"], max_bytes=10)
    with pytest.raises(BadAnswer, match="accepts at most 10 bytes"):
        small.check_header(pb.ModelHeader(version=4, manifest=manifest), 4, 0)


def test_bad_answers_back_off_and_give_up_at_the_limit() -> None:
    slept: list[float] = []
    counter = BadAnswerCounter("c", limit=3, backoff_base=0.1, sleep=slept.append)
    counter.record(BadAnswer("x", 1, "no"))
    counter.record(BadAnswer("x", 1, "no"))
    with pytest.raises(ServerUntrusted, match="3 bad answers in a row"):
        counter.record(BadAnswer("x", 1, "no"))
    assert len(slept) == 2 and 0.05 <= slept[0] <= 0.1 and 0.1 <= slept[1] <= 0.2
    counter.reset()
    assert counter.count == 0


def test_loggable_escapes_forged_lines() -> None:
    assert loggable("a\nERROR b") == "a\\nERROR b"
    assert len(loggable("x" * 10_000)) <= 601


def test_wait_pacer_floors_and_backs_off_only_on_immediate_waits() -> None:
    pacer = WaitPacer()
    assert pacer.delay(200, held_s=5.0, asked_s=5.0) == pytest.approx(0.05)  # an honest long poll
    delays = [pacer.delay(0, held_s=0.0, asked_s=5.0) for _ in range(8)]
    assert all(d >= 0.05 for d in delays)
    assert delays[-1] >= 1.0 and max(delays) <= 2.0
    assert pacer.delay(0, held_s=5.0, asked_s=5.0) == pytest.approx(0.05)
