"""The live dashboard: an aiohttp application that runs inside the server's own asyncio event loop.

Routes, all read-only (GET/HEAD): `/` the page, `/static/<file>` its script and style (package data, no CDN),
`/api/run` the RunView snapshot as JSON (the page polls it every second), `/metrics` Prometheus text.
With a token, a request needs `Authorization: Bearer TOKEN`, the cookie set after one visit to `/?token=TOKEN`,
or gets 401.

    runner, port = await start_dashboard(view, "127.0.0.1", 0)
    ...
    await stop_dashboard(runner)
"""

from __future__ import annotations

import hmac
import json
import ssl
from importlib import resources
from typing import Awaitable, Callable

from aiohttp import web

from fedstream.server.observe.access import is_loopback
from fedstream.server.observe.metrics import CONTENT_TYPE
from fedstream.server.observe.run_view import RunView

COOKIE = "fedstream_dashboard"
STATIC = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
VIEW_KEY = web.AppKey("view", RunView)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _static_files() -> dict[str, bytes]:
    folder = resources.files("fedstream.server.observe").joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in STATIC}


def _token_middleware(token: str, secure: bool) -> Callable:
    expected = token.encode()

    def matches(candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), expected)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and matches(header[len("Bearer "):].strip()):
            return await handler(request)
        if matches(request.cookies.get(COOKIE)):
            return await handler(request)
        if matches(request.query.get("token")):
            response = web.HTTPSeeOther(location=request.rel_url.with_query(None).path)
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=secure, path="/")
            raise response
        raise web.HTTPUnauthorized(text="this dashboard needs its token: open the link the server printed "
                                        "(ending in ?token=...), or send 'Authorization: Bearer TOKEN'\n",
                                   headers={"WWW-Authenticate": 'Bearer realm="fedstream"'})

    return check


@web.middleware
async def _security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        raise
    response.headers.update(SECURITY_HEADERS)
    return response


def make_app(view: RunView, token: str | None = None, secure: bool = False) -> web.Application:
    middlewares = [_security_headers] + ([_token_middleware(token, secure)] if token else [])
    app = web.Application(middlewares=middlewares)
    app[VIEW_KEY] = view
    files = _static_files()

    async def page(_request: web.Request) -> web.Response:
        return web.Response(body=files["index.html"], content_type=STATIC["index.html"], charset="utf-8")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in files or name == "index.html":
            raise web.HTTPNotFound(text=f"no static file {name!r}\n")
        return web.Response(body=files[name], content_type=STATIC[name], charset="utf-8")

    async def run(request: web.Request) -> web.Response:
        body = json.dumps(request.app[VIEW_KEY].snapshot(), allow_nan=False, default=str, separators=(",", ":"))
        return web.Response(text=body, content_type="application/json")

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=request.app[VIEW_KEY].metrics.expose())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/run", run)
    app.router.add_get("/metrics", metrics)
    return app


async def start_dashboard(view: RunView, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                          ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    """Serves the dashboard on the running event loop; returns the runner (for stop_dashboard) and the bound port."""
    if not token and not is_loopback(host):
        raise ValueError(f"--dashboard {host}:{port} is not a loopback address, so the dashboard needs a token: "
                         "pass --dashboard-token-file FILE, or let the server generate one and print it")
    runner = web.AppRunner(make_app(view, token, secure=ssl_context is not None), access_log=None,
                           handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ValueError(f"--dashboard {host}:{port}: cannot listen there ({exc.strerror}); choose a free port, "
                         "or port 0 for any free one") from None
    bound_port = runner.addresses[0][1]
    return runner, bound_port


async def stop_dashboard(runner: web.AppRunner) -> None:
    await runner.cleanup()
