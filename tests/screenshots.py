"""`make screenshots`: a PNG of each dashboard page under docs/screenshots/, from the embedded stack (synthetic feed)
in headless chromium, with one trade closed and one position open so that every page has something to show."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

import httpx

from services.decision.dashboard.routes import PAGE_ROWS  # noqa: F401  (the dashboard is importable: fail early)
from tests.api.dashboard_stack import dashboard_app, demo_key, open_position, positions, scan
from tests.browser_kit import Chromium, ThreadServer

PAGES = [
    ("overview", "/", {}),
    ("overview-phone", "/", {"width": 390, "height": 844, "mobile": True}),
    ("bot", "/bots/{bot_id}", {}),
    ("signals", "/signals", {}),
    ("decisions", "/decisions", {}),
    ("chart", "/chart/{symbol}", {}),
    ("docs", "/docs", {}),
]


async def _trade_history(server, stack, key: str) -> None:
    """One closed trade (the bot page's stats and equity curve) and one open position (the overview, the chart)."""
    first = await server.call(open_position(stack))
    await server.call(scan(stack, 20))
    if first.id in {d.id for d in await server.call(positions(stack))}:  # its stop or target may have closed it already
        async with httpx.AsyncClient(base_url=server.base, headers={"X-API-Key": key}) as client:
            (await client.post(f"/api/v1/positions/{first.id}/close")).raise_for_status()
    for _ in range(100):
        if await server.call(positions(stack, "closed")):
            break
        await asyncio.sleep(0.1)
    await server.call(scan(stack, 10))
    await server.call(open_position(stack))
    await server.call(scan(stack, 2))


async def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        app, stack, announced = dashboard_app(Path(tmp))
        with ThreadServer(app) as server:
            key = demo_key(announced)
            await _trade_history(server, stack, key)
            opened = (await server.call(positions(stack)))[0]
            async with Chromium(Path(tmp) / "profile") as browser:
                await browser.open(f"{server.base}/login")
                await browser.screenshot(out / "login.png", height=520)
                await browser.evaluate(
                    "document.querySelector('input[name=name]').value = 'demo';"
                    f"document.querySelector('input[name=api_key]').value = {json.dumps(key)};"
                    "document.querySelector('form[action=\"/login\"]').submit(); true"
                )
                await browser.wait_for("location.pathname === '/' && document.readyState === 'complete'")
                for name, path, screen in PAGES:
                    await browser.open(server.base + path.format(bot_id=opened.bot_id, symbol=opened.symbol))
                    if name.startswith("overview"):
                        await browser.wait_for("document.getElementById('live-state').textContent === 'live'")
                    if name in ("bot", "chart"):
                        await browser.wait_for("Array.from(document.querySelectorAll('[data-figure]')).every(n => n.dataset.drawn === 'yes')")
                    if name == "docs":
                        await browser.wait_for("!!document.querySelector('.swagger-ui .opblock')")
                    await asyncio.sleep(0.5)
                    await browser.screenshot(out / f"{name}.png", **screen)
                    print(f"wrote {out / name}.png")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")))
