"""Join rate limit: a token bucket per peer host, so one host cannot open sessions faster than a set rate.

`--max-sessions` bounds how many sessions exist; this bounds how fast one address can churn them (each Join
verifies credentials and may evict a session of the same client id). A host gets `burst` joins at once and
`rate` more per second after that; the refusal says when to retry, and clients back off and retry on their own
(RESOURCE_EXHAUSTED is retryable). The table of hosts is bounded; the least recently seen host is forgotten first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable
from urllib.parse import unquote

DEFAULT_RATE = 100.0
DEFAULT_BURST = 1000
MAX_HOSTS = 100_000


def peer_host(peer: str) -> str:
    """The host part of a gRPC peer string: 'ipv4:10.0.0.7:5123' -> '10.0.0.7', 'ipv6:%5B::1%5D:5123' -> '::1'."""
    kind, _, address = unquote(peer).partition(":")
    if kind == "ipv4":
        return address.rpartition(":")[0] or address
    if kind == "ipv6":
        return address.rpartition(":")[0].strip("[]") or address
    return peer


class JoinRateLimit:
    """rate joins per second per host after a burst of `burst`; rate 0 turns the limit off."""

    def __init__(self, rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST, max_hosts: int = MAX_HOSTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate < 0 or burst < 1:
            raise ValueError(f"join rate must be >= 0 and burst >= 1, got rate {rate} and burst {burst}")
        self.rate, self.burst, self.max_hosts, self.clock = rate, burst, max_hosts, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def wait_seconds(self, host: str) -> float:
        """0 when host may join now (and spends one join), else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.pop(host, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
            self._buckets[host] = (tokens - 1.0 if wait == 0.0 else tokens, now)
            while len(self._buckets) > self.max_hosts:
                self._buckets.popitem(last=False)
            return wait
