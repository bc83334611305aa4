"""What the server process sets up so a person can watch the run: the run view and, unless turned off, the dashboard."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Awaitable, Callable

from fedstream.server.observe.launch import open_dashboard
from fedstream.server.observe.run_view import RunView
from fedstream.server.observe.tensorboard import TensorBoardLog

log = logging.getLogger("fedstream.server")


def run_view(run_dir: Path, **header: object) -> RunView:
    """The run view with TensorBoard files in run_dir/tensorboard and the run header filled in."""
    view = RunView(sinks=[TensorBoardLog(run_dir)])
    view.set_header(status="running", **header)
    return view


def dashboard_starter(view: RunView, address: str, token_file: Path | None,
                      tls_dir: Path | None) -> Callable[[object], Awaitable[Callable[[], Awaitable[None]]]]:
    """An on_start hook for server.transport.server.serve: opens the dashboard on the server's loop, prints its
    link once (stdout, so `fedstream demo` shows it too), and returns the coroutine that closes it."""

    async def start(_served: object) -> Callable[[], Awaitable[None]]:
        dashboard = await open_dashboard(view, address, token_file, tls_dir)
        print(f"dashboard: {dashboard.url}", flush=True)
        log.info("dashboard on %s:%d", dashboard.host, dashboard.port)

        async def stop() -> None:
            view.set_header(status="finished")
            await dashboard.stop()

        return stop

    return start
