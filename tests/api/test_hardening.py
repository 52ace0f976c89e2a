"""The hardening of the public API: bodies a route does not take, values out of reason, mt5 credentials, a symbol the
feed cannot serve, passwords kept out of 422s however late the routes are mounted, and route times from the clock."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from services.decision.app import SymbolsUnavailable, mount
from shared.db.models import AuditLog, Bot, BrokerAccount
from tests.api.api_helpers import bot_row, new_account, new_bot
from tests.decision.decision_helpers import T0


# --- bodies ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"{bad", b"[1]", b'{"bot_id": 1}', b"not json"])
async def test_kill_all_with_a_body_it_does_not_take_is_refused_and_kills_nothing(api, alice, body):
    account = await new_account(api, alice)
    bot = await new_bot(api, alice, account["id"])
    headers = {**alice.headers, "Content-Type": "application/json"}
    answer = await api.client.post("/api/v1/kill", content=body, headers=headers)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"] == ["body"]
    assert (await bot_row(api, bot["id"])).status == "active"
    for path in (f"/api/v1/bots/{bot['id']}/kill", f"/api/v1/bots/{bot['id']}/pause", "/api/v1/keys"):
        assert (await api.client.post(path, content=body, headers=headers)).status_code == 422, path
    assert (await bot_row(api, bot["id"])).status == "active"


@pytest.mark.parametrize("body", [b"", b"{}", b"null", b"  "])
async def test_an_empty_body_is_still_welcome_where_none_is_taken(api, alice, body):
    account = await new_account(api, alice)
    bot = await new_bot(api, alice, account["id"])
    answer = await api.client.post(f"/api/v1/bots/{bot['id']}/pause", content=body, headers={**alice.headers, "Content-Type": "application/json"})
    assert answer.status_code == 200 and answer.json()["status"] == "paused"


# --- values ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"default_qty": 5e-324}, "default_qty"),
        ({"default_qty": 0.013}, "default_qty"),
        ({"default_qty": 150}, "default_qty"),
        ({"default_tp_pips": 96_174}, "default_tp_pips"),
        ({"default_sl_pips": 1e-300}, "default_sl_pips"),
        ({"max_spread_pips": 5e-324}, "max_spread_pips"),
        ({"kill_switch_max_daily_loss_pct": 5e-324}, "kill_switch_max_daily_loss_pct"),
    ],
)
async def test_bot_values_out_of_reason_are_refused_naming_the_field(api, alice, fields, field):
    account = await new_account(api, alice)
    answer = await api.client.post("/api/v1/bots", json={"account_id": account["id"], "symbol": "XAUUSDm", **fields}, headers=alice.headers)
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"][0]["loc"][-1] == field
    assert (await api.client.get("/api/v1/bots", headers=alice.headers)).json()["count"] == 0


async def test_a_lot_off_the_symbols_step_is_refused_with_the_allowed_values_not_rounded(api, alice):
    account = await new_account(api, alice)
    answer = await api.client.post("/api/v1/bots", json={"account_id": account["id"], "symbol": "XAUUSDm", "default_qty": 0.013},
                                   headers=alice.headers)
    assert answer.status_code == 422
    assert "0.01 to 100 lots in steps of 0.01" in answer.json()["detail"][0]["msg"]
    bot = await new_bot(api, alice, account["id"], default_qty=0.07)
    assert bot["default_qty"] == 0.07
    patched = await api.client.patch(f"/api/v1/bots/{bot['id']}", json={"default_qty": 0.015}, headers=alice.headers)
    assert patched.status_code == 422 and "steps of 0.01" in patched.json()["detail"][0]["msg"]
    assert (await bot_row(api, bot["id"])).default_qty == 0.07
    assert (await api.client.patch(f"/api/v1/bots/{bot['id']}", json={"default_qty": 1.25}, headers=alice.headers)).json()["default_qty"] == 1.25


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"leverage": 5e-324}, "leverage"), ({"leverage": 1e6}, "leverage"), ({"max_volume": 1.5e167}, "max_volume"), ({"max_volume": 1e-9}, "max_volume")],
)
async def test_account_values_out_of_reason_are_refused(api, alice, fields, field):
    answer = await api.client.post("/api/v1/accounts", json=fields, headers=alice.headers)
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"][-1] == field, answer.text
    account = await new_account(api, alice)
    patched = await api.client.patch(f"/api/v1/accounts/{account['id']}", json=fields, headers=alice.headers)
    assert patched.status_code == 422, patched.text


@pytest.mark.parametrize("missing", ["login", "server", "password"])
async def test_an_mt5_account_needs_login_server_and_password(api, alice, missing):
    mt5 = {"broker": "mt5", "login": "5001", "server": "Broker-Demo", "password": "env:MT5_PASSWORD"}
    del mt5[missing]
    answer = await api.client.post("/api/v1/accounts", json=mt5, headers=alice.headers)
    assert answer.status_code == 422 and missing in answer.json()["detail"][0]["msg"], answer.text
    assert (await api.client.get("/api/v1/accounts", headers=alice.headers)).json()["count"] == 0


@pytest.mark.parametrize("password", ["p" * 400, "é" * 200, "enc:v1:not-sealed-by-this-key"])
async def test_a_password_that_cannot_be_sealed_is_a_422_not_a_500(api, alice, password):
    account = await new_account(api, alice)
    for method, path in (("POST", "/api/v1/accounts"), ("PATCH", f"/api/v1/accounts/{account['id']}")):
        answer = await api.client.request(method, path, json={"password": password}, headers=alice.headers)
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"][-1] == "password", answer.text
        assert password not in answer.text


async def test_an_mt5_accounts_login_and_server_cannot_be_cleared(api, alice):
    account = await new_account(api, alice, broker="mt5", login="5001", server="Broker-Demo", password="env:MT5_PASSWORD")
    for field in ("login", "server"):
        answer = await api.client.patch(f"/api/v1/accounts/{account['id']}", json={field: None}, headers=alice.headers)
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", field]
    assert (await api.client.get(f"/api/v1/accounts/{account['id']}", headers=alice.headers)).json()["login"] == "5001"


# --- a symbol the feed serves ------------------------------------------------------------------------------------


@pytest.fixture
async def gold_only(api):
    """The API of an install whose feed serves only XAUUSD (the synthetic feed's default)."""
    served: dict = {"symbols": {"XAUUSD"}}

    async def served_symbols():
        if served["symbols"] is None:
            raise SymbolsUnavailable("market data at http://md:8001 did not answer")
        return served["symbols"]

    app = FastAPI()
    mount(app, api.service, served_symbols=served_symbols)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield client, served


async def test_a_bots_symbol_must_be_one_the_feed_serves(api, alice, gold_only):
    client, served = gold_only
    account = await new_account(api, alice)
    refused = await client.post("/api/v1/bots", json={"account_id": account["id"], "symbol": "GBPUSD"}, headers=alice.headers)
    assert refused.status_code == 422 and "the feed serves XAUUSD" in refused.json()["detail"][0]["msg"]
    created = await client.post("/api/v1/bots", json={"account_id": account["id"], "symbol": "XAUUSDm"}, headers=alice.headers)
    assert created.status_code == 201, created.text
    bot_id = created.json()["id"]
    patched = await client.patch(f"/api/v1/bots/{bot_id}", json={"symbol": "GBPUSD"}, headers=alice.headers)
    assert patched.status_code == 422 and patched.json()["detail"][0]["loc"] == ["body", "symbol"]
    assert (await bot_row(api, bot_id)).symbol == "XAUUSDm"
    # Market data unreachable: the symbol cannot be checked, so nothing is created (and other changes still work).
    served["symbols"] = None
    unknown = await client.post("/api/v1/bots", json={"account_id": account["id"], "symbol": "XAUUSD"}, headers=alice.headers)
    assert unknown.status_code == 503
    assert (await client.patch(f"/api/v1/bots/{bot_id}", json={"default_qty": 0.02}, headers=alice.headers)).status_code == 200


# --- no password echoed, however late the routes are mounted ----------------------------------------------------


@pytest.mark.parametrize("password", [12345, "x" * 600, ["s3cret"], "env:"])
async def test_a_refused_password_is_not_echoed_even_when_the_routes_are_mounted_after_start(api, alice, password):
    # As in the embedded app and `scalper serve`: the app has answered (its middleware is built) before the mount.
    app = FastAPI()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        assert (await client.get("/nothing")).status_code == 404
        mount(app, api.service)
        for method, path in (("POST", "/api/v1/accounts"), ("PATCH", "/api/v1/accounts/1")):
            answer = await client.request(method, path, json={"name": "x", "password": password}, headers=alice.headers)
            assert answer.status_code == 422, answer.text
            assert "s3cret" not in answer.text and "xxxxxxxxxx" not in answer.text and "12345" not in answer.text
            assert all("input" not in e for e in answer.json()["detail"] if "password" in e["loc"])


# --- times from the service clock --------------------------------------------------------------------------------


async def test_every_route_stamps_the_service_clocks_time(api, alice):
    api.clock.set(T0 + timedelta(days=3))  # far from the wall clock: a wall-clock stamp cannot pass for it
    account = await new_account(api, alice)
    async with api.sessions() as s:
        row = await s.get(BrokerAccount, account["id"])
        created = (await s.execute(select(AuditLog).where(AuditLog.kind == "account").order_by(AuditLog.id.desc()).limit(1))).scalar_one()
    assert row.created_at.replace(tzinfo=T0.tzinfo) == api.clock.now() == created.at.replace(tzinfo=T0.tzinfo)
    bot = await new_bot(api, alice, account["id"])
    steps = [
        ("patch", f"/api/v1/accounts/{account['id']}", {"leverage": 50}),
        ("patch", f"/api/v1/bots/{bot['id']}", {"default_qty": 0.02}),
        ("post", f"/api/v1/bots/{bot['id']}/pause", None),
        ("post", f"/api/v1/bots/{bot['id']}/resume", None),
        ("post", f"/api/v1/bots/{bot['id']}/kill", None),
        ("post", f"/api/v1/bots/{bot['id']}/resume", None),
        ("post", "/api/v1/keys", None),
    ]
    for i, (method, path, body) in enumerate(steps):
        api.clock.advance(timedelta(minutes=1))
        answer = await api.client.request(method.upper(), path, json=body, headers=alice.headers)
        assert answer.status_code in (200, 201), (path, answer.text)
        now = api.clock.now()
        if "/bots/" in path:
            row = await bot_row(api, bot["id"])
            assert row.updated_at.replace(tzinfo=now.tzinfo) == now, (path, row.updated_at, now)
        async with api.sessions() as s:
            last = (await s.execute(select(AuditLog).order_by(AuditLog.id.desc()).limit(1))).scalar_one()
        assert last.at.replace(tzinfo=now.tzinfo) == now, (path, last.message, last.at, now)
    issued = answer.json()
    assert issued["created_at"].startswith(api.clock.now().date().isoformat())
    api.clock.advance(timedelta(minutes=1))
    revoked = await api.client.delete(f"/api/v1/keys/{issued['id']}", headers=alice.headers)
    assert revoked.json()["revoked_at"].startswith(api.clock.now().date().isoformat())
    api.clock.advance(timedelta(minutes=1))
    assert (await api.client.delete(f"/api/v1/bots/{bot['id']}", headers=alice.headers)).status_code == 204
    async with api.sessions() as s:
        row = await s.get(Bot, bot["id"])
    assert row.deleted_at.replace(tzinfo=api.clock.now().tzinfo) == api.clock.now()
