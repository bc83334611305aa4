"""Starting the dashboard from the server's flags: address, token rule, HTTPS, and the one line to print.

    dashboard = await open_dashboard(view, "127.0.0.1:0", token_file=None, tls_dir=None)
    print(f"dashboard: {dashboard.url}")        # once; carries ?token=... only when the token was generated
    ...
    await dashboard.stop()
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from fedstream.server.observe.address import DEFAULT_ADDRESS, split_address
from fedstream.server.observe.access import dashboard_token, dashboard_url, server_ssl_context
from fedstream.server.observe.dashboard import start_dashboard, stop_dashboard
from fedstream.server.observe.run_view import RunView


@dataclass
class Dashboard:
    runner: web.AppRunner
    host: str
    port: int
    url: str
    token: str | None

    async def stop(self) -> None:
        await stop_dashboard(self.runner)


async def open_dashboard(view: RunView, address: str = DEFAULT_ADDRESS, token_file: Path | None = None,
                         tls_dir: Path | None = None) -> Dashboard:
    """Serves the dashboard on the running loop; HTTPS with server.pem/server.key when tls_dir is given."""
    host, port = split_address(address)
    token, generated = dashboard_token(host, token_file)
    context = server_ssl_context(tls_dir) if tls_dir is not None else None
    runner, bound = await start_dashboard(view, host, port, token=token, ssl_context=context)
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    url = dashboard_url(shown_host, bound, context is not None, token if generated else None)
    return Dashboard(runner, host, bound, url, token)
