"""`fedstream status`: the state of a running server, read from its dashboard's /api/run."""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from pathlib import Path
from typing import Any

from fedstream.cli.options import host_port, positive_float
from fedstream.server.observe.access import client_ssl_context, read_token


def status_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", type=host_port, required=True, metavar="HOST:PORT",
                   help="the dashboard address the server printed at start (not its gRPC address)")
    p.add_argument("--dashboard-token-file", type=Path, default=None,
                   help="the dashboard's token (needed when the dashboard listens on a non-loopback address)")
    p.add_argument("--tls-dir", type=Path, default=None,
                   help="use HTTPS and verify the server against ca.pem from this `fedstream certs` directory")
    p.add_argument("--server-name", default=None,
                   help="name in the server certificate, when it differs from the host in --server")
    p.add_argument("--timeout", type=positive_float, default=10.0, help="seconds to wait for an answer (default 10)")
    p.add_argument("--json", action="store_true", help="print the whole /api/run snapshot as JSON")


async def fetch_run(url: str, token: str | None, context: ssl.SSLContext | None, server_name: str | None,
                    timeout: float) -> dict[str, Any]:
    import aiohttp  # here, not at module level: every `fedstream` command imports this module

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    extra: dict[str, Any] = {"ssl": context} if context is not None else {}
    if server_name and context is not None:
        extra["server_hostname"] = server_name
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.get(url, headers=headers, allow_redirects=False, **extra) as response:
            if response.status == 401:
                raise ValueError(f"{url} refused the request (401): pass the dashboard's token with "
                                 "--dashboard-token-file FILE")
            if response.status != 200:
                raise ValueError(f"{url} answered HTTP {response.status}; expected 200 from a fedstream dashboard")
            try:
                return await response.json(content_type=None)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ValueError(f"{url} did not answer JSON; is {url.split('/api')[0]} a fedstream dashboard?") \
                    from None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def describe(run: dict[str, Any]) -> str:
    """The few lines a person wants: what runs, where it is, its clients, the last round's scores."""
    h = run.get("header", {})
    if h.get("mode") == "async":
        where = f"version {h.get('version', 0)}"
    else:
        where = f"round {h.get('round', 0)}" + (f"/{h['rounds']}" if h.get("rounds") else "")
    parts = [str(h[k]) for k in ("task", "mode", "strategy") if h.get(k)] + [where]
    if isinstance(h.get("epsilon"), (int, float)):
        parts.append(f"ε {h['epsilon']:.3f}")
    if "secure_aggregation" in h:
        parts.append(f"secure aggregation {'on' if h['secure_aggregation'] else 'off'}")
    if h.get("status"):
        parts.append(str(h["status"]))
    clients = run.get("clients", {})
    counts = ", ".join(f"{state} {n}" for state, n in clients.get("counts", {}).items() if n)
    lines = [f"run: {', '.join(parts)}",
             f"clients: {clients.get('connected', 0)} connected of {clients.get('total', 0)} seen"
             + (f" ({counts})" if counts else "")]
    recent = run.get("recent_rounds") or []
    if recent:
        last = recent[0]
        label = f"round {last['round']}" if "round" in last else f"version {last.get('version')}"
        scores = []
        if isinstance(last.get("eval_accuracy"), (int, float)):
            scores.append(f"accuracy {last['eval_accuracy']:.4f}")
        if isinstance(last.get("eval_loss"), (int, float)):
            scores.append(f"eval loss {last['eval_loss']:.4f}")
        if isinstance(last.get("clients"), int):
            scores.append(_plural(last["clients"], "client"))
        if isinstance(last.get("seconds"), (int, float)):
            scores.append(f"{last['seconds']:.2f} s")
        lines.append(f"last {label}: {', '.join(scores) or 'not evaluated'}")
    else:
        lines.append("no round recorded yet")
    for event in (run.get("events") or [])[:3]:
        lines.append(f"  {event.get('kind')}: {event.get('text')}")
    return "\n".join(lines)


def run_status(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import aiohttp

    scheme = "https" if args.tls_dir else "http"
    url = f"{scheme}://{args.server}/api/run"
    try:
        token = read_token(args.dashboard_token_file) if args.dashboard_token_file else None
        context = client_ssl_context(args.tls_dir) if args.tls_dir else None
        run = asyncio.run(fetch_run(url, token, context, args.server_name, args.timeout))
    except ValueError as exc:
        print(f"fedstream status: {exc}", file=sys.stderr)
        return 1
    except aiohttp.ClientConnectorCertificateError as exc:
        print(f"fedstream status: {url}: the server's certificate does not verify ({exc.certificate_error}); "
              "check --tls-dir is the federation's directory, and pass --server-name NAME when the certificate "
              "names another host than the one in --server", file=sys.stderr)
        return 1
    except aiohttp.ClientSSLError as exc:
        print(f"fedstream status: {url}: TLS failed ({exc}); without --tls-dir the dashboard must be plain HTTP, "
              "with it HTTPS", file=sys.stderr)
        return 1
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        cause = getattr(getattr(exc, "os_error", None), "strerror", None) or str(exc) or type(exc).__name__
        print(f"fedstream status: cannot reach the dashboard at {args.server} ({cause}); "
              "use the dashboard address the server printed at start", file=sys.stderr)
        return 1
    print(json.dumps(run, indent=2) if args.json else describe(run))
    return 0
