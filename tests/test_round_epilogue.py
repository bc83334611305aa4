"""In-process coordinator: heartbeats say the run ended only when it has, and a failed epilogue stops the run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fedstream.common.proto import coordinator_pb2 as pb
from tests.inprocess import random_delta, send, start_federation, upload_stream


def _beat(member) -> pb.HeartbeatReply:
    return member.stub.Heartbeat(pb.HeartbeatRequest(session_id=member.session_id), timeout=10)


def _deliver(fed, members, number: int) -> None:
    fed.wait_round(number, len(members))
    version = fed.coordinator.mode.round.base_version
    for i, member in enumerate(members):
        assert send(member, upload_stream(member, number, version, random_delta(fed.initial, number * 10 + i))).accepted


def test_heartbeats_say_finished_only_once_the_run_is_over(tmp_path: Path) -> None:
    fed = start_federation(tmp_path / "run", rounds=2)
    try:
        members = [fed.join(c) for c in ("a", "b")]
        fed.wait_round(1, 2)
        assert not _beat(members[0]).finished
        _deliver(fed, members, 1)
        fed.wait_completed(1)
        reply = _beat(members[1])
        assert not reply.finished and reply.finish_message == ""
        _deliver(fed, members, 2)
        fed.thread.join(timeout=20)
        reply = _beat(members[0])
        assert reply.finished and reply.finish_message == "the run is over"
    finally:
        fed.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_checkpoint_that_cannot_be_written_stops_the_run_and_says_why(tmp_path: Path, monkeypatch) -> None:
    def full_disk(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("fedstream.server.core.coordinator.save_checkpoint", full_disk)
    fed = start_federation(tmp_path / "run", rounds=3)
    try:
        members = [fed.join(c) for c in ("a", "b")]
        _deliver(fed, members, 1)
        deadline = time.monotonic() + 20
        while not _beat(members[0]).finished and time.monotonic() < deadline:
            time.sleep(0.05)
        reply = _beat(members[0])
        assert reply.finished and "No space left on device" in reply.finish_message, reply
        fed.thread.join(timeout=20)
        assert not fed.thread.is_alive()
        assert fed.coordinator.completed_rounds == 1
    finally:
        fed.close()
