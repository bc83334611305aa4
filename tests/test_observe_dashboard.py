"""The dashboard over real HTTP on 127.0.0.1: routes, read-only, the token rules, HTTPS, and `fedstream status`."""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest

from fedstream.common.security.certs import make_federation_certs
from fedstream.server.observe.access import (client_ssl_context, dashboard_token, dashboard_url, is_loopback,
                                             read_token, server_ssl_context)
from fedstream.server.observe.dashboard import start_dashboard, stop_dashboard
from fedstream.server.observe.launch import open_dashboard
from fedstream.server.observe.run_view import RunView

CLI = [sys.executable, "-m", "fedstream.cli"]
TOKEN = "s3cret-token-for-tests-0123456789"


def scripted_view() -> RunView:
    view = RunView()
    view.set_header(task="digits", mode="sync", strategy="fedavg", rounds=5, round=0, secure_aggregation=False)
    view.client_joined("site-a", "cpu")
    view.client_joined("site-b", "cuda:0")
    view.client_contributed("site-a", 1000, 0.5)
    view.round_recorded({"round": 1, "clients": 1, "selected": 2, "eval_accuracy": 0.8125, "eval_loss": 0.5,
                         "seconds": 1.25, "bytes_up": 1000, "bytes_down": 2000, "dropped": {"site-b": "broke"}})
    view.client_dropped("site-b", "upload broke")
    return view


@asynccontextmanager
async def serving(view: RunView, host: str = "127.0.0.1", **kwargs: object) -> AsyncIterator[int]:
    runner, port = await start_dashboard(view, host, 0, **kwargs)
    try:
        yield port
    finally:
        await stop_dashboard(runner)


def test_routes_and_read_only() -> None:
    async def main() -> None:
        view = scripted_view()
        async with serving(view) as port, aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port}"
            async with http.get(base + "/") as r:
                assert r.status == 200 and "text/html" in r.headers["Content-Type"]
                assert "script-src 'self'" in r.headers["Content-Security-Policy"]
                assert '<script src="/static/app.js"' in await r.text()
            for name, kind in (("app.js", "javascript"), ("style.css", "css")):
                async with http.get(f"{base}/static/{name}") as r:
                    assert r.status == 200 and kind in r.headers["Content-Type"]
            async with http.get(base + "/static/index.html") as r:
                assert r.status == 404
            async with http.get(base + "/static/..%2Frun_view.py") as r:
                assert r.status == 404
            async with http.get(base + "/api/run") as r:
                run = await r.json()
            assert run["header"]["round"] == 1 and run["recent_rounds"][0]["eval_accuracy"] == 0.8125
            assert {row["id"]: row["state"] for row in run["clients"]["rows"]} == {"site-a": "idle",
                                                                                   "site-b": "dropped"}
            async with http.get(base + "/metrics") as r:
                before = await r.text()
            view.round_recorded({"round": 2, "seconds": 1.0})
            async with http.get(base + "/metrics") as r:
                after = await r.text()
            assert "fedstream_rounds_completed_total 1.0" in before
            assert "fedstream_rounds_completed_total 2.0" in after
            for method in ("POST", "PUT", "DELETE"):
                async with http.request(method, base + "/api/run") as r:
                    assert r.status == 405

    asyncio.run(main())


def test_token_header_query_and_cookie() -> None:
    async def main() -> None:
        async with serving(scripted_view(), token=TOKEN) as port:
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                for path in ("/", "/api/run", "/metrics", "/static/app.js"):
                    async with http.get(base + path) as r:
                        assert r.status == 401, path
                async with http.get(base + "/api/run", headers={"Authorization": "Bearer wrong-token-123456"}) as r:
                    assert r.status == 401
                async with http.get(base + "/?token=wrong") as r:
                    assert r.status == 401
                async with http.get(base + "/api/run", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                    assert r.status == 200
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
                async with browser.get(f"{base}/?token={TOKEN}", allow_redirects=False) as r:
                    assert r.status == 303 and r.headers["Location"] == "/"
                    cookie = r.headers["Set-Cookie"]
                    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
                async with browser.get(base + "/api/run") as r:
                    assert r.status == 200

    asyncio.run(main())


def test_non_loopback_needs_a_token_and_a_taken_port_is_named() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="not a loopback address.*--dashboard-token-file"):
            await start_dashboard(RunView(), "0.0.0.0", 0)
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        try:
            with pytest.raises(ValueError, match=f"127.0.0.1:{taken.getsockname()[1]}: cannot listen there"):
                await start_dashboard(RunView(), "127.0.0.1", taken.getsockname()[1])
        finally:
            taken.close()

    asyncio.run(main())


def test_access_helpers(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("coordinator.example")
    assert dashboard_token("127.0.0.1", None) == (None, False)
    token, generated = dashboard_token("0.0.0.0", None)
    assert generated and len(token) >= 32
    (tmp_path / "t").write_text(TOKEN + "\n")
    assert dashboard_token("0.0.0.0", tmp_path / "t") == (TOKEN, False)
    (tmp_path / "short").write_text("abc")
    with pytest.raises(ValueError, match="3 characters"):
        read_token(tmp_path / "short")
    with pytest.raises(ValueError, match="cannot read it"):
        read_token(tmp_path / "absent")
    assert dashboard_url("::1", 8000, True, "x") == "https://[::1]:8000/?token=x"
    with pytest.raises(ValueError, match="server.pem is missing"):
        server_ssl_context(tmp_path)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    make_federation_certs(out, ["localhost", "127.0.0.1"], ["site-a"])
    return out


def test_https_with_the_server_certificate(certs: Path) -> None:
    async def main() -> None:
        async with serving(scripted_view(), ssl_context=server_ssl_context(certs), token=TOKEN) as port:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"https://127.0.0.1:{port}/api/run", ssl=client_ssl_context(certs),
                                    headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                    assert (await r.json())["header"]["task"] == "digits"
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await http.get(f"https://127.0.0.1:{port}/api/run", ssl=ssl.create_default_context())
                with pytest.raises(aiohttp.ClientError):
                    await http.get(f"http://127.0.0.1:{port}/api/run")

    asyncio.run(main())


async def status(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*CLI, "status", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.slow
def test_status_command_over_https_with_a_token(certs: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "dashboard.token"
    token_file.write_text(TOKEN)

    async def main() -> None:
        async with serving(scripted_view(), ssl_context=server_ssl_context(certs), token=TOKEN) as port:
            address = f"127.0.0.1:{port}"
            code, out, err = await status("--server", address, "--tls-dir", str(certs),
                                          "--dashboard-token-file", str(token_file))
            assert code == 0, err
            assert out.splitlines()[0] == "run: digits, sync, fedavg, round 1/5, secure aggregation off"
            assert "1 connected of 2 seen (idle 1, dropped 1)" in out
            assert "last round 1: accuracy 0.8125, eval loss 0.5000, 1 client, 1.25 s" in out
            code, out, err = await status("--server", address, "--tls-dir", str(certs))
            assert code == 1 and "401" in err and "--dashboard-token-file" in err and out == ""
            code, _, err = await status("--server", address, "--dashboard-token-file", str(token_file))
            assert code == 1 and "fedstream status:" in err
        code, _, err = await status("--server", address, "--timeout", "5")
        assert code == 1 and f"cannot reach the dashboard at {address}" in err

    asyncio.run(main())


def test_open_dashboard_from_flags(certs: Path, tmp_path: Path) -> None:
    async def main() -> None:
        view = scripted_view()
        plain = await open_dashboard(view)
        try:
            assert plain.url == f"http://127.0.0.1:{plain.port}/" and plain.token is None
        finally:
            await plain.stop()
        generated = await open_dashboard(view, "0.0.0.0:0", tls_dir=certs)
        try:
            assert generated.url == f"https://127.0.0.1:{generated.port}/?token={generated.token}"
            async with aiohttp.ClientSession() as http:
                async with http.get(f"https://127.0.0.1:{generated.port}/api/run", ssl=client_ssl_context(certs),
                                    headers={"Authorization": f"Bearer {generated.token}"}) as r:
                    assert r.status == 200
        finally:
            await generated.stop()
        (tmp_path / "token").write_text(TOKEN)
        from_file = await open_dashboard(view, "0.0.0.0:0", token_file=tmp_path / "token")
        try:
            assert from_file.token == TOKEN and "token=" not in from_file.url
        finally:
            await from_file.stop()
        with pytest.raises(ValueError, match="expected HOST:PORT with a port 0-65535"):
            await open_dashboard(view, "127.0.0.1:99999")

    asyncio.run(main())


def test_dashboard_flags() -> None:
    import argparse

    from fedstream.cli.dashboard_flags import add_dashboard_flags

    parser = argparse.ArgumentParser()
    add_dashboard_flags(parser)
    args = parser.parse_args([])
    assert (args.dashboard, args.no_dashboard, args.dashboard_token_file) == ("127.0.0.1:0", False, None)
    assert parser.parse_args(["--dashboard", "[::1]:8081"]).dashboard == "[::1]:8081"
    with pytest.raises(SystemExit):
        parser.parse_args(["--dashboard", "0.0.0.0:99999"])
