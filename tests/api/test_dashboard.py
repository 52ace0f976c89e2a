"""The dashboard over HTTP (no browser): the login and its cookie, CSRF on every cookie-authenticated change, the
pages a user sees of their own things only, closing one position through the outbox, and the decision checks table."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet

from services.decision.dashboard import mount_dashboard
from shared.bus import topology
from shared.messages import ExecutorCommand
from shared.settings import Settings
from shared.secrets import key_for
from tests.api.api_helpers import decide, fill_and_close, new_account, new_bot, snapshot
from tests.decision.decision_helpers import T0


@pytest.fixture(autouse=True)
def secret_key():
    key_for(Settings(_env_file=None, secret_key=Fernet.generate_key().decode()), embedded=False)


@pytest.fixture
def dash(api):
    async def bars(symbol: str, count: int):
        return [{"time": T0 + timedelta(minutes=i), "open": 2000.0, "high": 2001.0, "low": 1999.0, "close": 2000.5} for i in range(count)]

    mount_dashboard(api.app, api.service, bars=bars)
    return api


async def log_in(client, person) -> str:
    answer = await client.post("/login", data={"name": person.name, "api_key": person.key})
    assert answer.status_code == 303 and answer.headers["location"] == "/", answer.text
    page = await client.get("/")
    assert page.status_code == 200
    return re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)


async def open_position(api, person, *, ticket: int = 7001):
    account = await new_account(api, person)
    bot = await new_bot(api, person, account["id"])
    _, intent = await decide(api, bot["id"])
    assert intent is not None
    await fill_and_close(api, intent, ticket=ticket, pnl=None)
    return account, bot, intent


async def test_login_sets_a_signed_httponly_samesite_cookie_and_no_key_in_any_url(dash, alice):
    client = dash.client
    first = await client.get("/")
    assert first.status_code == 303 and first.headers["location"] == "/login"
    form = await client.get("/login")
    assert form.status_code == 200 and 'name="api_key"' in form.text and 'method="post"' in form.text
    assert 'name="viewport"' in form.text
    assert "frame-ancestors 'none'" in form.headers["content-security-policy"] and form.headers["x-frame-options"] == "DENY"

    refused = await client.post("/login", data={"name": alice.name, "api_key": "not-a-key"})
    assert refused.status_code == 401 and "scalper_session" not in refused.headers.get("set-cookie", "")

    answer = await client.post("/login", data={"name": alice.name, "api_key": alice.key})
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/" in cookie
    assert alice.key not in cookie and alice.key not in answer.headers["location"]
    # a forged cookie is no session
    client.cookies.set("scalper_session", cookie.split(";")[0].split("=", 1)[1][:-3] + "abc")
    assert (await client.get("/")).status_code == 303


async def test_cookie_changes_need_the_csrf_token_and_logout_ends_the_session(dash, alice):
    client = dash.client
    account = await new_account(dash, alice)
    bot = await new_bot(dash, alice, account["id"])
    csrf = await log_in(client, alice)

    assert (await client.get("/api/v1/me")).json()["name"] == alice.name  # reads need no token
    refused = await client.post(f"/api/v1/bots/{bot['id']}/pause")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    assert (await client.post(f"/api/v1/bots/{bot['id']}/pause", headers={"X-CSRF-Token": "wrong"})).status_code == 403
    paused = await client.post(f"/api/v1/bots/{bot['id']}/pause", headers={"X-CSRF-Token": csrf})
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    # the API's own validation answers a bad edit from the bot page
    bad = await client.patch(f"/api/v1/bots/{bot['id']}", json={"decision_min_score": 5}, headers={"X-CSRF-Token": csrf})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "decision_min_score"]

    assert (await client.post("/logout")).status_code == 403  # logging out is a change too
    out = await client.post("/logout", data={"csrf_token": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert (await client.get("/")).status_code == 303
    assert (await client.get("/api/v1/me")).status_code == 401


async def test_a_revoked_key_ends_its_dashboard_session(dash, alice):
    client = dash.client
    await log_in(client, alice)
    keys = (await client.get("/api/v1/keys")).json()["data"]
    assert (await client.delete(f"/api/v1/keys/{keys[0]['id']}", headers=alice.headers)).status_code == 200
    assert (await client.get("/")).status_code == 303


async def test_overview_shows_the_account_the_open_position_with_live_pnl_and_the_bots(dash, alice, bob):
    account, bot, intent = await open_position(dash, alice)
    await dash.service.handle_account_snapshot(snapshot(account["id"], balance=10_000.0, equity=10_012.5, at=T0 + timedelta(minutes=2)))
    await open_position(dash, bob, ticket=9009)
    await log_in(dash.client, alice)
    page = (await dash.client.get("/")).text
    assert "10,000.00" in page and "10,012.50" in page  # balance, equity from the snapshot
    assert 'data-position="' in page and "/api/v1/positions/" in page
    # marked to the bar source's last close 2000.5 from the 2000.0 fill: 0.5 x volume x contract size (100 oz)
    expected = 0.5 * intent.volume * 100
    assert f"{expected:,.2f}" in page
    assert f'data-bot="{bot["id"]}"' in page and "armed at 2.0%" in page
    assert page.count('data-position="') == 1  # bob's position is not alice's


async def test_closing_a_position_sends_close_position_through_the_outbox(dash, alice, bob):
    _, bot, intent = await open_position(dash, alice, ticket=7001)
    positions = (await dash.client.get("/api/v1/positions", headers=alice.headers)).json()["data"]
    position_id = positions[0]["decision_id"]

    assert (await dash.client.post(f"/api/v1/positions/{position_id}/close", headers=bob.headers)).status_code == 404
    answer = await dash.client.post(f"/api/v1/positions/{position_id}/close", headers=alice.headers)
    assert answer.status_code == 202 and answer.json() == {"decision_id": position_id, "ticket": 7001, "status": "closing"}
    sent = [m for _, m in dash.bus.sent(topology.EXECUTION_COMMANDS)]
    assert sent and isinstance(sent[-1], ExecutorCommand)
    assert (sent[-1].command, sent[-1].ticket, sent[-1].bot_id, sent[-1].reason) == ("close_position", 7001, bot["id"], "manual")
    audit = (await dash.client.get("/api/v1/audit?kind=position", headers=alice.headers)).json()["data"]
    assert any("close requested" in row["message"] for row in audit)

    await fill_and_close(dash, intent, ticket=7001, pnl=-3.0)  # the executor's closed event
    again = await dash.client.post(f"/api/v1/positions/{position_id}/close", headers=alice.headers)
    assert again.status_code == 409
    assert (await dash.client.post("/api/v1/positions/999999/close", headers=alice.headers)).status_code == 404


async def test_decisions_page_shows_each_check_as_name_value_limit_passed(dash, alice):
    account = await new_account(dash, alice)
    bot = await new_bot(dash, alice, account["id"])
    await decide(dash, bot["id"])
    await decide(dash, bot["id"], bar_time=T0 + timedelta(minutes=1), score=0.05)  # refused: below the min score
    await log_in(dash.client, alice)
    page = (await dash.client.get("/decisions")).text
    tables = re.findall(r'<table class="checks">(.*?)</table>', page, re.S)
    assert len(tables) == 2
    header = re.findall(r"<th[^>]*>([^<]+)</th>", tables[0])
    assert header == ["Check", "Value", "Limit", "Passed"]
    assert "score_below_min" in page or "min_score" in page
    assert 'class="failed"' in page and "✘ no" in page and "✔ yes" in page
    filtered = (await dash.client.get("/decisions?action=ignore")).text
    assert len(re.findall(r'<table class="checks">', filtered)) == 1
    signals = (await dash.client.get(f"/signals?bot_id={bot['id']}")).text
    assert "price_action_pinbar" in signals and "2000.00" in signals  # the gold price at its 2 digits, not a float repr


async def test_bot_chart_and_static_pages_render(dash, alice, bob):
    _, bot, _ = await open_position(dash, alice)
    await log_in(dash.client, alice)
    bot_page = await dash.client.get(f"/bots/{bot['id']}")
    assert bot_page.status_code == 200 and 'id="bot-settings"' in bot_page.text and "decision min score" in bot_page.text
    chart = await dash.client.get(f"/chart/{bot['symbol']}")
    assert chart.status_code == 200 and '"candlestick"' in chart.text and "SL #" in chart.text and "TP #" in chart.text
    assert (await dash.client.get("/chart/EURUSD")).status_code == 404  # no bot of alice's trades it
    js = await dash.client.get("/static/plotly.min.js")
    assert js.status_code == 200 and "plotly" in js.text[:2000].lower()
    assert "https://cdn" not in chart.text
    bob_bot = (await dash.client.get("/api/v1/bots", headers=bob.headers)).json()
    assert bob_bot["count"] == 0
