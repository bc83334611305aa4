"""The dashboard in a real headless Chromium, served in-process from a scripted RunView."""

from __future__ import annotations

import asyncio
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedstream.server.observe.dashboard import start_dashboard, stop_dashboard
from fedstream.server.observe.run_view import RunView
from tests.browser import SKIP_REASON, Browser, chromium_binary, dump_dom, screenshot

pytestmark = [pytest.mark.slow, pytest.mark.skipif(chromium_binary() is None, reason=SKIP_REASON)]
TOKEN = "browser-test-token-0123456789abcdef"
CLIENTS = ["site-a", "site-b", "site-c", "site-d"]


class DataRows(HTMLParser):
    """Collects the data-client/data-state and data-round attributes the page puts on its table rows."""

    def __init__(self) -> None:
        super().__init__()
        self.clients: dict[str, str] = {}
        self.rounds: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-client"):
            self.clients[a["data-client"]] = a.get("data-state") or ""
        if tag == "tr" and a.get("data-round"):
            self.rounds.add(a["data-round"])


def play_round(view: RunView, number: int, dropped: dict[str, str]) -> None:
    view.clients_sampled(len(CLIENTS))
    for cid in CLIENTS:
        view.client_state(cid, "training")
        view.model_sent(cid, 400_000)
    for cid in CLIENTS:
        if cid in dropped:
            view.client_dropped(cid, dropped[cid])
        else:
            view.client_state(cid, "uploading")
            view.client_contributed(cid, 400_000, 0.8 + 0.1 * CLIENTS.index(cid))
    view.round_recorded({"round": number, "clients": len(CLIENTS) - len(dropped), "selected": len(CLIENTS),
                         "train_loss": 1.6 / number, "eval_loss": 1.3 / number + 0.05,
                         "eval_accuracy": 1 - 0.55 / number, "bytes_up": 1.6e6, "bytes_down": 1.6e6,
                         "seconds": 1.2, "dropped": dropped})
    view.event("checkpoint", f"round {number}: checkpoint written")


def started_view() -> RunView:
    view = RunView()
    view.set_header(task="digits", mode="sync", strategy="fedavg", rounds=10, round=0, secure_aggregation=False)
    for i, cid in enumerate(CLIENTS):
        view.client_joined(cid, "cuda:0" if i % 2 else "cpu")
    for number in (1, 2, 3):
        play_round(view, number, {})
    return view


def test_page_shows_rounds_clients_and_drops_and_renders(tmp_path: Path) -> None:
    async def main() -> None:
        view = started_view()
        runner, port = await start_dashboard(view, "127.0.0.1", 0, token=TOKEN)
        url = f"http://127.0.0.1:{port}/?token={TOKEN}"
        try:
            rows = DataRows()
            rows.feed(await dump_dom(url))
            assert rows.rounds == {"1", "2", "3"}
            assert rows.clients == {cid: "idle" for cid in CLIENTS}

            play_round(view, 4, {"site-c": "upload broke: DATA_LOSS (crc mismatch)"})
            rows = DataRows()
            dom = await dump_dom(url)
            rows.feed(dom)
            assert "4" in rows.rounds and rows.clients["site-c"] == "dropped"
            assert "upload broke: DATA_LOSS (crc mismatch)" in dom and "round <b>4 / 10</b>" in dom

            shot = await screenshot(url, tmp_path / "dashboard.png", 1280, 900)
            image = Image.open(shot).convert("RGB")
            assert image.size == (1280, 900)
            colours = image.getcolors(maxcolors=1 << 20) or []
            assert len(colours) > 200, f"screenshot has {len(colours)} colours; the page did not render"
            rgb = np.asarray(image, dtype=np.int16)
            r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
            blue = int(((abs(r - 0x25) < 40) & (abs(g - 0x63) < 40) & (abs(b - 0xEB) < 40)).sum())
            red = int(((r > 190) & (g < 80) & (b < 80)).sum())
            assert blue > 300, f"only {blue} accuracy-blue pixels: the chart did not draw"
            assert red > 100, f"only {red} red pixels: neither the loss line nor the dropped badge drew"
            assert (rgb.std(axis=(0, 1)) > 20).all(), "the screenshot is nearly one colour"
        finally:
            await stop_dashboard(runner)

    asyncio.run(main())


def test_an_open_page_follows_the_run_within_two_seconds() -> None:
    async def main() -> None:
        view = started_view()
        runner, port = await start_dashboard(view, "127.0.0.1", 0, token=TOKEN)
        try:
            async with Browser() as page:
                await page.open(f"http://127.0.0.1:{port}/?token={TOKEN}")
                await page.wait_for("document.querySelector('#rounds tr[data-round=\"3\"]') !== null", timeout=20)
                assert await page.evaluate("location.search") == ""
                play_round(view, 4, {"site-b": "session expired after 30 s"})
                seconds = await page.wait_for(
                    "document.querySelector('#clients tr[data-client=\"site-b\"]').dataset.state === 'dropped' && "
                    "document.querySelector('#rounds tr[data-round=\"4\"]') !== null", timeout=10)
                assert seconds < 2.0, f"the page took {seconds:.2f} s to show round 4"
                assert await page.evaluate("document.querySelectorAll('#chart svg path.series').length") == 3
                live = await page.evaluate("document.getElementById('live').className")
                assert "stale" not in live
        finally:
            await stop_dashboard(runner)

    asyncio.run(main())
