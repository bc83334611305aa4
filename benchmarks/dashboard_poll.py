"""What one dashboard poll costs the server's event loop: /api/run and /metrics served in-process, timed.

python benchmarks/dashboard_poll.py --clients 4,10000 --rounds 10,10000 --polls 200
The loop-time share at the page's one poll per second is (ms per poll) / 1000.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp

from fedstream.server.observe.dashboard import start_dashboard, stop_dashboard
from fedstream.server.observe.run_view import RunView


def filled_view(clients: int, rounds: int) -> RunView:
    view = RunView()
    view.set_header(task="digits", mode="sync", strategy="fedavg", rounds=rounds, secure_aggregation=False)
    for i in range(clients):
        view.client_joined(f"client-{i}", "cpu")
        view.client_contributed(f"client-{i}", 1000, 0.5)
    for r in range(1, rounds + 1):
        view.round_recorded({"round": r, "clients": min(clients, 10), "eval_accuracy": 0.9, "eval_loss": 0.3,
                             "train_loss": 0.4, "bytes_up": 1e6, "bytes_down": 1e6, "seconds": 1.0,
                             "dropped": {"client-1": "session expired"}})
    return view


async def measure(clients: int, rounds: int, polls: int) -> dict[str, float]:
    view = filled_view(clients, rounds)
    runner, port = await start_dashboard(view, "127.0.0.1", 0)
    out = {}
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/api/run", "/metrics"):
                started = time.perf_counter()
                for _ in range(polls):
                    async with http.get(f"http://127.0.0.1:{port}{path}") as response:
                        await response.read()
                out[path] = (time.perf_counter() - started) / polls * 1000
            started = time.perf_counter()
            for _ in range(polls):
                view.snapshot()
            out["snapshot()"] = (time.perf_counter() - started) / polls * 1000
    finally:
        await stop_dashboard(runner)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="4,10000", help="comma-separated client counts")
    parser.add_argument("--rounds", default="10,10000", help="comma-separated round counts, paired with --clients")
    parser.add_argument("--polls", type=int, default=200)
    args = parser.parse_args()
    print("| clients | rounds | /api/run ms (client+server) | /metrics ms | snapshot() ms |")
    print("|---|---|---|---|---|")
    for clients, rounds in zip(map(int, args.clients.split(",")), map(int, args.rounds.split(","))):
        ms = asyncio.run(measure(clients, rounds, args.polls))
        print(f"| {clients} | {rounds} | {ms['/api/run']:.2f} | {ms['/metrics']:.2f} | {ms['snapshot()']:.3f} |")


if __name__ == "__main__":
    main()
