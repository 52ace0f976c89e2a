"""The dashboard in a real headless browser (Debian's chromium over the DevTools protocol) against the embedded stack
on a real port: a trader logs in, sees a position appear live (server-sent events, no reload), closes it with its
button, and sees it closed; the chart draws candles with the stops and targets, and the decisions page its checks."""

from __future__ import annotations

import json

import pytest

from tests.api.dashboard_stack import dashboard_app, demo_key, open_position, positions
from tests.browser_kit import Chromium, ThreadServer

pytestmark = pytest.mark.slow


async def log_in(browser: Chromium, base: str, name: str, key: str) -> None:
    await browser.open(f"{base}/")
    assert (await browser.evaluate("location.pathname")) == "/login"  # no session: sent to log in
    await browser.evaluate(
        f"document.querySelector('input[name=name]').value = {json.dumps(name)};"
        f"document.querySelector('input[name=api_key]').value = {json.dumps(key)};"
        "document.querySelector('form[action=\"/login\"]').submit(); true"
    )
    await browser.wait_for("location.pathname === '/' && document.readyState === 'complete' && !!document.getElementById('live')")


async def test_a_trader_sees_a_position_appear_live_and_closes_it_with_its_button(tmp_path, chromium_available):
    app, stack, announced = dashboard_app(tmp_path)
    with ThreadServer(app) as server:
        async with Chromium(tmp_path / "profile") as browser:
            await log_in(browser, server.base, "demo", demo_key(announced))
            assert "key" not in (await browser.evaluate("location.href")).lower()  # the key went in the body, not the URL
            assert await browser.evaluate("document.cookie") == ""  # HttpOnly: no script reads the session
            await browser.wait_for("document.getElementById('live-state').textContent === 'live'")
            assert await browser.evaluate("!!document.getElementById('no-positions')")
            await browser.evaluate("window.__same_page = true; window.confirm = () => true; true")

            decision = await server.call(open_position(stack))
            assert (decision.action, decision.position_status) == ("open", "open"), decision.reason
            row = f"#positions tr[data-position='{decision.id}']"
            await browser.wait_for(f"!!document.querySelector(\"{row}\")")
            assert await browser.evaluate("window.__same_page === true")  # it came over /events, not by a reload
            text = await browser.evaluate(f"document.querySelector(\"{row}\").innerText")
            assert decision.symbol in text and "buy" in text

            await browser.evaluate(f"document.querySelector(\"{row} button.close\").click(); true")
            await browser.wait_for(f"!document.querySelector(\"{row}\")", timeout=30)
            assert await browser.evaluate("window.__same_page === true")
            assert await browser.evaluate("!!document.getElementById('no-positions')")

            closed = await server.call(positions(stack, "closed"))
            assert [(d.id, d.close_reason) for d in closed] == [(decision.id, "manual")]

            # Logging out ends the session: the overview sends to the login page again.
            await browser.evaluate("document.querySelector('form.logout').submit(); true")
            await browser.wait_for("location.pathname === '/login'")
            await browser.open(f"{server.base}/")
            assert (await browser.evaluate("location.pathname")) == "/login"


async def test_the_chart_draws_candles_stops_and_targets_and_the_decisions_page_its_checks(tmp_path, chromium_available):
    app, stack, announced = dashboard_app(tmp_path)
    with ThreadServer(app) as server:
        decision = await server.call(open_position(stack))
        assert decision.position_status == "open", decision.reason
        async with Chromium(tmp_path / "profile") as browser:
            await log_in(browser, server.base, "demo", demo_key(announced))

            await browser.open(f"{server.base}/chart/{decision.symbol}")
            await browser.wait_for("document.getElementById('candles').dataset.drawn === 'yes' && !!document.querySelector('#candles .main-svg')")
            traces = await browser.evaluate("document.getElementById('candles').data.map(t => [t.type || 'scatter', t.name])")
            kinds = {kind for kind, _ in traces}
            names = [name for _, name in traces]
            assert "candlestick" in kinds
            assert f"SL #{decision.id}" in names and f"TP #{decision.id}" in names and "entry" in names and "buy signal" in names
            candles = await browser.evaluate("document.getElementById('candles').data.find(t => t.type === 'candlestick').x.length")
            assert candles > 100
            # the candles really are on screen: plotly drew their boxes
            assert await browser.evaluate("document.querySelectorAll('#candles .trace.boxes path, #candles g.candlestick path').length") > 0
            assert (await browser.evaluate("Array.from(document.scripts).map(s => s.src).filter(s => s && !s.startsWith(location.origin))")) == []

            await browser.open(f"{server.base}/decisions")
            await browser.wait_for("!!document.querySelector('table.checks')")
            header = await browser.evaluate("Array.from(document.querySelector('table.checks thead').querySelectorAll('th')).map(th => th.innerText)")
            assert header == ["Check", "Value", "Limit", "Passed"]
            rows = await browser.evaluate(
                "Array.from(document.querySelector('table.checks tbody').rows).map(r => Array.from(r.cells).map(c => c.innerText))"
            )
            by_name = {r[0]: r for r in rows}
            assert set(c["name"] for c in decision.checks) == set(by_name)
            assert by_name["score_below_min"][1:] == ["0.95", "0.3", "✔ yes"]
            # no check spills off a phone's screen: the table scrolls inside its box
            await browser.send("Emulation.setDeviceMetricsOverride", width=390, height=844, deviceScaleFactor=1, mobile=True)
            overflow = await browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
            assert overflow


async def test_swagger_ui_and_redoc_render_the_schema_without_internet(tmp_path, chromium_available):
    app, _, _ = dashboard_app(tmp_path)
    with ThreadServer(app) as server:
        async with Chromium(tmp_path / "profile") as browser:
            await browser.send("Network.enable")
            await browser.open(f"{server.base}/docs")
            await browser.wait_for("document.querySelectorAll('.swagger-ui .opblock').length > 20")
            summaries = await browser.evaluate("Array.from(document.querySelectorAll('.opblock-summary-description')).map(e => e.innerText)")
            assert "Close one open position" in summaries and "Kill a bot" in summaries
            await browser.open(f"{server.base}/redoc")
            await browser.wait_for("document.body.innerText.includes('Close one open position')")
            await browser.evaluate("1")  # collect the events sent meanwhile
            # Nothing left for the internet: ReDoc's footer logo (its CDN) is refused by the page's CSP, unsent.
            requests = {e["params"]["requestId"]: e["params"]["request"]["url"] for e in browser.events if e["method"] == "Network.requestWillBeSent"}
            blocked = {e["params"]["requestId"] for e in browser.events
                       if e["method"] == "Network.loadingFailed" and e["params"].get("blockedReason") == "csp"}
            external = sorted(url for rid, url in requests.items() if not url.startswith((server.base, "data:", "blob:")) and rid not in blocked)
            assert external == []
