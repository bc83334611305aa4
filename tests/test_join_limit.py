"""Join rate limit: token buckets per host (fake clock), and a real server refusing a flood with the fix."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from fedstream.server.core.join_limit import JoinRateLimit, peer_host
from tests.inprocess import start_federation
from tests.test_admission import FakeClock as Clock


def test_a_host_gets_its_burst_then_the_rate_and_other_hosts_are_not_affected() -> None:
    clock = Clock()
    limit = JoinRateLimit(rate=2.0, burst=3, clock=clock)
    assert [limit.wait_seconds("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.wait_seconds("a") == pytest.approx(0.5)
    assert limit.wait_seconds("b") == 0.0
    clock.now = 0.5
    assert limit.wait_seconds("a") == 0.0
    assert limit.wait_seconds("a") == pytest.approx(0.5)
    clock.now = 100.0
    waits = [limit.wait_seconds("a") for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0] and waits[3] > 0, "refills to the burst, no further"


def test_rate_zero_turns_the_limit_off_and_the_host_table_is_bounded() -> None:
    assert all(JoinRateLimit(rate=0, burst=1).wait_seconds("a") == 0.0 for _ in range(100))
    limit = JoinRateLimit(rate=1.0, burst=1, max_hosts=10, clock=Clock())
    for i in range(50):
        limit.wait_seconds(f"host-{i}")
    assert len(limit._buckets) == 10
    with pytest.raises(ValueError, match="burst"):
        JoinRateLimit(rate=1.0, burst=0)


@pytest.mark.parametrize("peer,host", [("ipv4:10.0.0.7:5123", "10.0.0.7"), ("ipv6:%5B::1%5D:54362", "::1"),
                                       ("ipv6:[::1]:5123", "::1"),
                                       ("ipv6:[fe80::1%eth0]:80", "fe80::1%eth0"), ("unix:/tmp/s", "unix:/tmp/s")])
def test_peer_host_drops_the_port(peer: str, host: str) -> None:
    assert peer_host(peer) == host


def test_a_join_flood_from_one_host_is_refused_with_when_to_retry(tmp_path: Path) -> None:
    fed = start_federation(tmp_path / "run", join_rate=0.5, join_burst=2)
    try:
        fed.join("a")
        fed.join("b")
        with pytest.raises(grpc.RpcError) as refused:
            fed.join("c")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many joins from 127.0.0.1" in refused.value.details()
        assert "--join-rate" in refused.value.details()
        assert len(fed.coordinator.sessions) == 2
    finally:
        fed.close()
