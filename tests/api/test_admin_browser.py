"""The admin pages in a real headless browser (Debian's chromium, driven over the DevTools protocol): an admin logs
in with their name and API key, opens the signals page and sees the rows an end-to-end replay produced. A user
without --admin cannot enter. Also: the embedded app mounts the API and the admin pages."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from scalper.embedded import EmbeddedStack, create_app
from services.decision.admin import mount_admin
from services.decision.users import create_user
from services.market_data.feeds.replay import ReplayFeed
from shared.db.engine import create_engine, session_factory, transaction
from shared.db.models import SignalRow
from shared.settings import Settings
from shared.timeutil import ManualClock
from tests.browser_kit import Chromium, ThreadServer

pytestmark = pytest.mark.slow

def _settings(tmp_path, feed: str) -> Settings:
    return Settings(
        _env_file=None, database_url=f"sqlite+aiosqlite:///{tmp_path / 'admin.db'}", bus_url="memory://", feed=feed,
        scan_mode="interval", scan_interval_s=10**9, monitor_interval_s=3600, order_ttl_s=600,
    )


async def _replay(tmp_path, gold_file, minutes: int = 600) -> tuple[str, list[SignalRow]]:
    """Run the embedded stack on a slice of the gold file until it has made a few signals; return the DB URL and them."""
    feed = ReplayFeed(gold_file, "XAUUSD")
    clock = ManualClock(feed.start_time() + timedelta(seconds=1))
    settings = _settings(tmp_path, f"replay:{gold_file}")
    stack = EmbeddedStack(settings, feed=feed, clock=clock)
    await stack.start()
    try:
        for minute in range(minutes):
            clock.advance(timedelta(minutes=1))
            await stack.market_data.scan_once()
            await stack.bus.idle(timeout=30)
            if minute % 50 == 0:
                async with stack.sessions() as s:
                    if len((await s.execute(select(SignalRow.signal_id))).all()) >= 3:
                        break
        async with stack.sessions() as s:
            signals = list((await s.execute(select(SignalRow))).scalars())
    finally:
        await stack.stop()
    return settings.database_url, signals


async def _people(url: str) -> dict[str, tuple[str, str]]:
    engine = create_engine(url)
    try:
        async with transaction(session_factory(engine)) as session:
            _, admin_key = await create_user(session=session, name="root", is_admin=True)
            _, plain_key = await create_user(session=session, name="plain")
        return {"admin": ("root", admin_key), "plain": ("plain", plain_key)}
    finally:
        await engine.dispose()


def admin_app(url: str) -> FastAPI:
    """The admin pages alone (their own engine), to serve with browser_kit's ThreadServer."""
    app = FastAPI()
    engine = create_engine(url)
    mount_admin(app, engine=engine, sessions=session_factory(engine))
    return app


async def test_an_admin_logs_in_and_sees_the_replays_signals(tmp_path, gold_file, chromium_available):
    url, signals = await _replay(tmp_path, gold_file)
    assert signals, "the replay slice made no signal"
    people = await _people(url)
    with ThreadServer(admin_app(url)) as server:
        async with Chromium(tmp_path / "profile") as browser:
            await browser.open(f"{server.base}/admin/signal-row/list")
            assert (await browser.evaluate("location.pathname")).endswith("/admin/login")  # not logged in: sent to log in

            await browser.log_in(server.base, *people["plain"])  # a user without --admin cannot enter
            assert (await browser.evaluate("location.pathname")).endswith("/admin/login")

            await browser.log_in(server.base, *people["admin"])
            await browser.open(f"{server.base}/admin/signal-row/list")
            assert (await browser.evaluate("location.pathname")).endswith("/admin/signal-row/list")
            text = await browser.wait_for("document.querySelector('table') && document.body.innerText")
            for signal in signals:
                assert signal.signal_id in text
            assert signals[0].strategy in text
            # read-only: no way to add, edit or delete a signal
            html = await browser.evaluate("document.body.innerHTML")
            assert "/admin/signal-row/create" not in html and "/admin/signal-row/edit" not in html
            for page in ("decision", "order", "position", "audit-log", "bot", "broker-account"):
                await browser.open(f"{server.base}/admin/{page}/list")
                assert (await browser.evaluate("location.pathname")).endswith(f"/admin/{page}/list"), page
                assert await browser.evaluate("!!document.querySelector('table')"), page
            account_page = await browser.evaluate("document.body.innerText")
            assert "password" not in account_page.lower()


async def test_the_embedded_app_serves_the_api_and_the_admin_pages(tmp_path):
    settings = _settings(tmp_path, "synthetic")
    stack = EmbeddedStack(settings, clock=ManualClock(__import__("datetime").datetime(2024, 3, 1, 10, 0, tzinfo=__import__("datetime").UTC)))
    announced: list[str] = []
    app = create_app(stack, announce=announced.append)
    async with app.router.lifespan_context(app):
        key = announced[0].rsplit(": ", 1)[1].strip()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            me = await client.get("/api/v1/me", headers={"X-API-Key": key})
            assert me.status_code == 200 and me.json()["name"] == "demo"
            bots = (await client.get("/api/v1/bots", headers={"X-API-Key": key})).json()
            assert bots["count"] == 1 and bots["data"][0]["symbol"] == "XAUUSDm"
            assert (await client.get("/api/v1/bots")).status_code == 401
            assert (await client.get("/admin/login")).status_code == 200
            assert (await client.get("/admin/signal-row/list")).status_code in (302, 303, 307)
            paths = (await client.get("/openapi.json")).json()["paths"]
            assert "/api/v1/bots/{bot_id}/kill" in paths and "/api/v1/stats" in paths


async def test_an_admin_edit_of_a_bot_is_audited(tmp_path):
    from shared.db.engine import upgrade
    from shared.db.models import AuditLog, Bot, BrokerAccount

    url = f"sqlite+aiosqlite:///{tmp_path / 'edit.db'}"
    await asyncio.to_thread(upgrade, url)
    people = await _people(url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    async with transaction(sessions) as s:
        account = BrokerAccount(user_id=2, name="paper")
        s.add(account)
        await s.flush()
        bot = Bot(user_id=2, account_id=account.id, symbol="XAUUSDm", enabled_strategies=["price_action_pinbar"])
        s.add(bot)
        await s.flush()
        bot_id = bot.id
    with ThreadServer(admin_app(url)) as server:
        async with httpx.AsyncClient(base_url=server.base) as client:
            name, key = people["admin"]
            login = await client.post("/admin/login", data={"username": name, "password": key})
            assert login.status_code in (302, 303)
            form = await client.get(f"/admin/bot/edit/{bot_id}")
            assert form.status_code == 200 and "kill_switch_max_daily_loss_pct" in form.text
            fields = {"name": "gold", "auto_trade": "y", "decision_min_score": "0.6", "risk_max_concurrent_positions": "2",
                      "risk_max_per_symbol": "1", "max_trades_per_day": "25", "kill_switch_enabled": "y",
                      "kill_switch_max_daily_loss_pct": "2.0", "default_qty": "0.01", "save": "Save"}
            saved = await client.post(f"/admin/bot/edit/{bot_id}", data=fields)
            assert saved.status_code in (302, 303), saved.text[:2000]
            account_form = await client.get(f"/admin/broker-account/edit/{account.id}")
            assert account_form.status_code == 200 and "leverage" in account_form.text and "password" not in account_form.text.lower()
            details = await client.get(f"/admin/broker-account/details/{account.id}")
            assert details.status_code == 200 and "password" not in details.text.lower()
    async with sessions() as s:
        row = (await s.execute(select(AuditLog).where(AuditLog.kind == "bot"))).scalars().one()
        changed = await s.get(Bot, bot_id)
    await engine.dispose()
    assert changed.decision_min_score == 0.6 and changed.auto_trade is True
    assert row.actor == "admin:1" and row.bot_id == bot_id
    assert row.before == {"name": "", "auto_trade": False, "decision_min_score": 0.3} and row.after["decision_min_score"] == 0.6
