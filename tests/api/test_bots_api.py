"""Bots, accounts and keys over REST: the seed's defaults, validation answers a person can act on, the plan republished."""

from __future__ import annotations

from api_helpers import new_account, new_bot
from sqlalchemy import select

from shared.bus import topology
from shared.db.models import AuditLog
from shared.messages import ScanPlan
from shared.strategies import catalog


def plans(api) -> list[ScanPlan]:
    return [m for _, m in api.bus.sent(topology.CONTROL_PLAN)]


def errors(answer) -> list[tuple[str, str]]:
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in answer.json()["detail"]]


async def test_a_new_bot_has_the_seeds_defaults_and_joins_the_plan(api, alice):
    account = await new_account(api, alice)
    bot = await new_bot(api, alice, account["id"])
    assert bot["engine_mode"] == "scalper" and bot["default_timeframe"] == "1m" and bot["status"] == "active"
    assert bot["enabled_strategies"] == catalog.names("scalper")
    expected = {
        "default_qty": 0.01, "default_sl_pips": 3.0, "default_tp_pips": 5.0, "decision_min_score": 0.3,
        "risk_max_concurrent_positions": 2, "risk_max_per_symbol": 1, "max_trades_per_day": 25,
        "kill_switch_enabled": True, "kill_switch_max_daily_loss_pct": 2.0, "sl_tp_mode": "strategy",
    }
    assert {k: bot[k] for k in expected} == expected
    assert [sub.bot_id for s in plans(api)[-1].symbols for sub in s.subscriptions] == [bot["id"]]


async def test_a_change_publishes_a_new_plan_and_is_audited(api, alice):
    account = await new_account(api, alice)
    bot = await new_bot(api, alice, account["id"])
    answer = await api.client.patch(f"/api/v1/bots/{bot['id']}", json={"auto_trade": False, "decision_min_score": 0.5}, headers=alice.headers)
    assert answer.status_code == 200 and answer.json()["decision_min_score"] == 0.5
    assert plans(api)[-1].symbols == ()  # not auto-trading: out of the plan
    async with api.sessions() as s:
        row = (await s.execute(select(AuditLog).where(AuditLog.kind == "bot").order_by(AuditLog.id.desc()))).scalars().first()
    assert row.actor == f"user:{alice.id}"
    assert row.before == {"auto_trade": True, "decision_min_score": 0.3} and row.after == {"auto_trade": False, "decision_min_score": 0.5}


async def test_unknown_strategy_answers_422_naming_the_valid_ones(api, alice):
    account = await new_account(api, alice)
    answer = await api.client.post(
        "/api/v1/bots", json={"account_id": account["id"], "symbol": "XAUUSDm", "enabled_strategies": ["moon_phase"]}, headers=alice.headers
    )
    assert answer.status_code == 422
    [(field, message)] = errors(answer)
    assert field == "body.enabled_strategies"
    assert "moon_phase" in message and all(name in message for name in catalog.names("scalper"))


async def test_bad_strategy_params_answer_422_with_the_parameter(api, alice):
    account = await new_account(api, alice)
    name = catalog.names("scalper")[0]
    body = {"account_id": account["id"], "symbol": "XAUUSDm", "strategy_params": {name: {"no_such_param": 1}}}
    answer = await api.client.post("/api/v1/bots", json=body, headers=alice.headers)
    assert answer.status_code == 422
    [(field, message)] = errors(answer)
    assert field == f"body.strategy_params.{name}" and "no_such_param" in message


async def test_valid_strategy_params_are_kept_and_reach_the_plan(api, alice):
    account = await new_account(api, alice)
    name = catalog.names("scalper")[0]
    defaults = catalog.validate_params(name)
    key, value = next((k, v) for k, v in defaults.items() if isinstance(v, float) and not isinstance(v, bool))
    bot = await new_bot(api, alice, account["id"], strategy_params={name: {key: value * 1.1}})
    assert bot["strategy_params"] == {name: {key: value * 1.1}}
    [sub] = plans(api)[-1].symbols[0].subscriptions
    assert sub.strategies[0].params == {key: value * 1.1}


async def test_input_forbids_unknown_fields_and_names_the_field(api, alice):
    account = await new_account(api, alice)
    answer = await api.client.post("/api/v1/bots", json={"account_id": account["id"], "symbol": "XAUUSDm", "colour": "red"}, headers=alice.headers)
    assert answer.status_code == 422 and errors(answer)[0][0] == "body.colour"
    answer = await api.client.post("/api/v1/bots", json={"account_id": account["id"], "symbol": "XAUUSDm", "trading_hours": "9-17"}, headers=alice.headers)
    assert answer.status_code == 422
    field, message = errors(answer)[0]
    assert field == "body.trading_hours" and "HH:MM-HH:MM" in message
    answer = await api.client.post("/api/v1/bots", json={"account_id": account["id"], "symbol": "NOPE"}, headers=alice.headers)
    assert answer.status_code == 422 and errors(answer)[0][0] == "body.symbol" and "XAUUSD" in errors(answer)[0][1]
    answer = await api.client.post("/api/v1/bots", json={"account_id": account["id"], "symbol": "XAUUSDm", "decision_min_score": 1.5}, headers=alice.headers)
    assert answer.status_code == 422 and errors(answer)[0][0] == "body.decision_min_score"


async def test_a_second_bot_of_the_same_identity_is_a_conflict(api, alice):
    account = await new_account(api, alice)
    await new_bot(api, alice, account["id"])
    answer = await api.client.post("/api/v1/bots", json={"account_id": account["id"], "symbol": "XAUUSDm"}, headers=alice.headers)
    assert answer.status_code == 409 and "already trades" in answer.json()["detail"]


async def test_pause_resume_and_delete(api, alice):
    account = await new_account(api, alice)
    bot = await new_bot(api, alice, account["id"])
    paused = (await api.client.post(f"/api/v1/bots/{bot['id']}/pause", headers=alice.headers)).json()
    assert paused["status"] == "paused" and plans(api)[-1].symbols == ()
    resumed = (await api.client.post(f"/api/v1/bots/{bot['id']}/resume", headers=alice.headers)).json()
    assert resumed["status"] == "active" and len(plans(api)[-1].symbols) == 1
    assert (await api.client.delete(f"/api/v1/bots/{bot['id']}", headers=alice.headers)).status_code == 204
    assert (await api.client.get(f"/api/v1/bots/{bot['id']}", headers=alice.headers)).status_code == 404
    assert (await api.client.get("/api/v1/bots", headers=alice.headers)).json() == {"data": [], "count": 0, "next_cursor": None}
    # the identity is free again
    again = await new_bot(api, alice, account["id"])
    assert again["id"] != bot["id"]


async def test_the_password_is_write_only(api, alice, caplog):
    account = await new_account(api, alice, broker="mt5", login="123456", server="Demo-1", password="s3cret-pw", server_time="us_dst",
                                symbol_suffix="m", margin_mode="netting")
    assert "password" not in account and account["password_set"] is True
    assert account["server_time"] == "us_dst" and account["margin_mode"] == "netting" and account["symbol_suffix"] == "m"
    got = await api.client.get(f"/api/v1/accounts/{account['id']}", headers=alice.headers)
    listed = await api.client.get("/api/v1/accounts", headers=alice.headers)
    patched = await api.client.patch(f"/api/v1/accounts/{account['id']}", json={"password": "env:MT5_PASSWORD"}, headers=alice.headers)
    audit = await api.client.get("/api/v1/audit?kind=account", headers=alice.headers)
    for answer in (got, listed, patched, audit):
        assert answer.status_code == 200
        assert "s3cret-pw" not in answer.text and "MT5_PASSWORD" not in answer.text
    assert "s3cret-pw" not in caplog.text
    assert [row["message"] for row in audit.json()["data"]][0] == "account updated: password"


async def test_account_validation_says_what_to_write(api, alice):
    answer = await api.client.post("/api/v1/accounts", json={"server_time": "gmt+2"}, headers=alice.headers)
    assert answer.status_code == 422 and "us_dst" in answer.json()["detail"][0]["msg"]
    answer = await api.client.post("/api/v1/accounts", json={"password": "env:"}, headers=alice.headers)
    assert answer.status_code == 422 and "env:NAME" in answer.json()["detail"][0]["msg"]
    mt5 = {"broker": "mt5", "login": "5001", "server": "Broker-Demo", "password": "env:MT5_PASSWORD"}
    answer = await api.client.post("/api/v1/accounts", json={"server_time": "+2", **mt5}, headers=alice.headers)
    assert answer.status_code == 201 and answer.json()["server_time"] == "+2"


async def test_keys_can_be_issued_and_revoked(api, alice):
    issued = await api.client.post("/api/v1/keys", headers=alice.headers)
    assert issued.status_code == 201
    new = issued.json()
    second = {"X-API-Key": new["api_key"]}
    assert (await api.client.get("/api/v1/me", headers=second)).json()["name"] == "alice"
    listed = (await api.client.get("/api/v1/keys", headers=alice.headers)).json()
    assert listed["count"] == 2 and all("api_key" not in k and "key_hash" not in k for k in listed["data"])
    assert (await api.client.delete(f"/api/v1/keys/{new['id']}", headers=alice.headers)).json()["revoked_at"] is not None
    assert (await api.client.get("/api/v1/me", headers=second)).status_code == 401
    assert (await api.client.get("/api/v1/me", headers=alice.headers)).status_code == 200


async def test_bot_setup_shares_the_validation_and_makes_a_new_bot_for_a_deleted_identity(api, alice):
    from services.decision.bots import BotSetupError, setup_bot
    from shared.db.engine import transaction

    account = await new_account(api, alice)
    bot = await new_bot(api, alice, account["id"])
    async with transaction(api.sessions) as session:
        same = await setup_bot(session=session, user_id=alice.id, account_id=account["id"], symbol="XAUUSDm", auto_trade=False)
    assert same.id == bot["id"] and same.auto_trade is False  # upsert on (user, account, symbol, engine)
    try:
        async with transaction(api.sessions) as session:
            await setup_bot(session=session, user_id=alice.id, account_id=account["id"], symbol="XAUUSDm", auto_trade=True, strategies=["nope"])
    except BotSetupError as exc:
        assert exc.field == "enabled_strategies" and "valid ones" in str(exc)
    else:
        raise AssertionError("an unknown strategy was accepted")
    assert (await api.client.delete(f"/api/v1/bots/{bot['id']}", headers=alice.headers)).status_code == 204
    async with transaction(api.sessions) as session:
        fresh = await setup_bot(session=session, user_id=alice.id, account_id=account["id"], symbol="XAUUSDm", auto_trade=True)
    assert fresh.id != bot["id"] and fresh.status == "active" and fresh.deleted_at is None


async def test_a_bot_with_open_trades_cannot_be_deleted(api, alice):
    from api_helpers import decide

    account = await new_account(api, alice)
    bot = await new_bot(api, alice, account["id"])
    _, intent = await decide(api, bot["id"])
    assert intent is not None  # sent, not yet filled: an open trade
    answer = await api.client.delete(f"/api/v1/bots/{bot['id']}", headers=alice.headers)
    assert answer.status_code == 409 and f"/api/v1/bots/{bot['id']}/kill" in answer.json()["detail"]


async def test_audit_rows_are_append_only(api, alice):
    import pytest

    from services.decision.audit import AuditIsAppendOnly
    from shared.db.engine import transaction

    await new_account(api, alice)
    with pytest.raises(AuditIsAppendOnly):
        async with transaction(api.sessions) as session:
            row = (await session.execute(select(AuditLog))).scalars().first()
            row.message = "rewritten"
            await session.flush()
    with pytest.raises(AuditIsAppendOnly):
        async with transaction(api.sessions) as session:
            row = (await session.execute(select(AuditLog))).scalars().first()
            await session.delete(row)
            await session.flush()


async def test_a_refused_password_is_not_echoed_back(api, alice):
    answer = await api.client.post("/api/v1/accounts", json={"password": "env:bad name!"}, headers=alice.headers)
    assert answer.status_code == 422
    assert "bad name" not in answer.text and answer.json()["detail"][0]["loc"] == ["body", "password"]
