"""Headless Chromium for tests: the DOM after scripts ran, a screenshot, and a DevTools session for live checks.

Every call is async, so the page's server (the dashboard) can keep serving from the same event loop. The
binary is $FEDSTREAM_CHROMIUM or the first of chromium, chromium-browser, google-chrome on PATH; tests skip
with a reason where `chromium_binary()` is None.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")
SKIP_REASON = ("no chromium binary on PATH (apt-get install -y chromium, or set FEDSTREAM_CHROMIUM to a "
               "Chromium/Chrome binary)")


def chromium_binary() -> str | None:
    override = os.environ.get("FEDSTREAM_CHROMIUM")
    if override:
        return override if shutil.which(override) else None
    return next((path for path in map(shutil.which, NAMES) if path), None)


def _command(profile: str, *extra: str) -> list[str]:
    binary = chromium_binary()
    if binary is None:
        raise RuntimeError(SKIP_REASON)
    return [binary, *FLAGS, f"--user-data-dir={profile}", *extra]


async def _run(args: list[str], timeout: float) -> bytes:
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"chromium did not finish within {timeout} s: {args}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    return out


async def dump_dom(url: str, budget_ms: int = 3000, timeout: float = 60) -> str:
    """The serialised DOM once `budget_ms` of virtual time has passed after load (scripts and fetches ran)."""
    with tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as profile:
        out = await _run(_command(profile, f"--virtual-time-budget={budget_ms}", "--dump-dom", url), timeout)
    return out.decode("utf-8", errors="replace")


async def screenshot(url: str, path: Path, width: int = 1280, height: int = 900, budget_ms: int = 3000,
                     timeout: float = 60) -> Path:
    with tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as profile:
        await _run(_command(profile, f"--virtual-time-budget={budget_ms}", f"--window-size={width},{height}",
                            f"--screenshot={path}", url), timeout)
    if not Path(path).is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {path}")
    return Path(path)


class Browser:
    """A headless Chromium driven over the DevTools protocol: `await page.open(url)`, `await page.evaluate(js)`."""

    def __init__(self, width: int = 1280, height: int = 900) -> None:
        self.size = (width, height)
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True)
        self._proc: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._next_id = 0

    async def __aenter__(self) -> "Browser":
        args = _command(self._profile.name, "--remote-debugging-port=0", "--remote-allow-origins=*",
                        f"--window-size={self.size[0]},{self.size[1]}", "about:blank")
        self._proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.DEVNULL,
                                                          stderr=asyncio.subprocess.DEVNULL)
        port = await self._devtools_port()
        self._http = aiohttp.ClientSession()
        async with self._http.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t.get("type") == "page")
        self._ws = await self._http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=64 * 2**20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        self._profile.cleanup()

    async def _devtools_port(self, timeout: float = 30) -> int:
        marker = Path(self._profile.name) / "DevToolsActivePort"
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            if self._proc is not None and self._proc.returncode is not None:
                raise RuntimeError(f"chromium exited {self._proc.returncode} before opening DevTools")
            await asyncio.sleep(0.05)
        raise RuntimeError(f"chromium wrote no {marker} within {timeout} s")

    async def send(self, method: str, **params: Any) -> dict:
        assert self._ws is not None
        self._next_id += 1
        call_id = self._next_id
        await self._ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(await asyncio.wait_for(self._ws.receive_str(), 30))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def open(self, url: str) -> None:
        await self.send("Page.enable")
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10, interval: float = 0.05) -> float:
        """Seconds until `expression` is truthy in the page; raises TimeoutError after `timeout`."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while loop.time() - start < timeout:
            try:
                if await self.evaluate(expression):
                    return loop.time() - start
            except RuntimeError:
                pass
            await asyncio.sleep(interval)
        raise TimeoutError(f"page never satisfied {expression!r} within {timeout} s")
