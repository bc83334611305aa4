"""Transfer admission: a bounded number stream at once, a stalled holder gives its slot away, waiters can leave."""

import threading
import time

import pytest

from fedstream.server.core.admission import TransferSlots


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_at_most_limit_transfers_hold_a_slot_and_a_release_admits_the_next() -> None:
    slots = TransferSlots(limit=2, stall_seconds=60)
    first, second = slots.acquire(), slots.acquire()
    admitted = threading.Event()

    def third() -> None:
        slots.release(slots.acquire())
        admitted.set()

    waiter = threading.Thread(target=third)
    waiter.start()
    assert not admitted.wait(0.3), "a third transfer streamed beside two active ones"
    assert slots.active == 2
    slots.release(first)
    assert admitted.wait(5), "releasing a slot did not admit the waiting transfer"
    waiter.join()
    slots.release(second)
    assert slots.active == 0 and slots.waits == 1


def test_a_stalled_holder_stops_counting_but_one_that_moves_keeps_its_slot() -> None:
    clock = FakeClock()
    slots = TransferSlots(limit=1, stall_seconds=5, clock=clock)
    moving = slots.acquire()
    clock.now = 4.0
    moving.progress()
    clock.now = 8.0  # 4 s since its last chunk: not stalled
    assert not slots._room()
    clock.now = 9.5  # 5.5 s without a chunk: stalled, its slot goes to the next transfer
    late = slots.acquire()
    assert late is not None and slots.active == 1
    slots.release(moving)  # the stalled one finishing later frees nothing twice
    assert slots.active == 1
    slots.release(late)
    assert slots.active == 0


def test_a_cancelled_waiter_gives_up_without_a_slot() -> None:
    slots = TransferSlots(limit=1, stall_seconds=60)
    holder = slots.acquire()
    gone = threading.Event()
    result: list = []
    waiter = threading.Thread(target=lambda: result.append(slots.acquire(cancelled=gone.is_set)))
    waiter.start()
    time.sleep(0.2)
    gone.set()
    waiter.join(timeout=5)
    assert result == [None] and slots.active == 1
    slots.release(holder)


def test_limit_zero_means_no_limit_and_negative_is_refused() -> None:
    slots = TransferSlots(limit=0)
    held = [slots.acquire() for _ in range(50)]
    assert slots.active == 50
    for transfer in held:
        slots.release(transfer)
    with pytest.raises(ValueError, match="transfer limit"):
        TransferSlots(limit=-1)


def test_a_second_upload_waits_for_the_slot_and_sends_its_data_only_once_admitted(tmp_path) -> None:
    from fedstream.client.transfer import upload
    from fedstream.common.wire.manifest import encode_state
    from fedstream.common.wire.framing import DataChunk
    from tests.inprocess import CHUNK_BYTES, random_delta, start_federation, upload_stream

    fed = start_federation(tmp_path, max_transfers=1, min_clients=2, rounds=1)
    try:
        a, b = fed.join("a"), fed.join("b")
        assert a.session.upload_admission, "the server must announce that it admits uploads"
        fed.wait_round(1, 2)
        messages = upload_stream(a, 1, 0, random_delta(fed.initial, 1))
        a_done = threading.Event()

        def slow_a():
            def paced():
                for m in messages:
                    if isinstance(m, DataChunk):
                        time.sleep(0.4)
                    yield m
            a.stub.UploadUpdate(paced(), timeout=30)
            a_done.set()

        sender = threading.Thread(target=slow_a)
        sender.start()
        deadline = time.monotonic() + 10
        while fed.coordinator.transfers.active < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        sent_while_waiting: list[bool] = []
        delta = random_delta(fed.initial, 2)
        manifest, buffers = encode_state(delta, "raw")

        def b_upload():
            reply, _ = upload(b.stub, b.session_id, 1, 0, delta, b.num_examples, {}, "raw", CHUNK_BYTES,
                              encoded=(manifest, buffers), admission=True)
            return reply

        result: list = []
        b_thread = threading.Thread(target=lambda: result.append(b_upload()))
        b_thread.start()
        while not a_done.is_set():
            sent_while_waiting.append(fed.coordinator.transfers.active > 1)
            time.sleep(0.02)
        b_thread.join(timeout=30)
        sender.join(timeout=30)
        assert result and result[0].accepted
        assert not any(sent_while_waiting), "two uploads streamed at once with --max-transfers 1"
        assert fed.coordinator.transfers.waits >= 1, "b's upload never had to wait for a's"
        fed.wait_completed(1)
    finally:
        fed.close()
