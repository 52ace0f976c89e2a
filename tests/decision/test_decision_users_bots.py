"""Users and keys (hashed, never stored), paper accounts, the bot upsert and the demo created on first start."""

from __future__ import annotations

import hashlib

import pytest
from decision_helpers import add_account, add_user
from sqlalchemy import func, select, text
from sqlmodel import SQLModel

from services.decision.bots import DEMO_SYMBOL, BotSetupError, ensure_demo, setup_bot, strategy_names
from services.decision.users import UserExists, create_user, ensure_paper_account, revoke_keys, user_for_key
from shared.db.engine import transaction
from shared.db.models import ApiKey, AuditLog, Bot, BrokerAccount, User


async def all_cells(db) -> str:
    """Every value of every table, as one text."""
    out = []
    async with db() as s:
        for table in SQLModel.metadata.sorted_tables:
            for row in (await s.execute(text(f'SELECT * FROM "{table.name}"'))).all():
                out.extend(str(v) for v in row)
    return "\n".join(out)


async def test_user_key_is_stored_only_as_its_hash(db):
    async with transaction(db) as s:
        user, key = await create_user(session=s, name="carol", is_admin=True)
    assert len(key) >= 32
    async with db() as s:
        row = (await s.execute(select(ApiKey).where(ApiKey.user_id == user.id))).scalar_one()
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert row.prefix == key[:8]
    cells = await all_cells(db)
    assert key not in cells and key[8:] not in cells
    async with db() as s:
        found = await user_for_key(session=s, api_key=key)
        assert found is not None and (found.id, found.is_admin) == (user.id, True)
        assert await user_for_key(session=s, api_key=key + "x") is None


async def test_revoked_key_no_longer_authenticates(db):
    async with transaction(db) as s:
        user, key = await create_user(session=s, name="dave")
    async with transaction(db) as s:
        assert await revoke_keys(session=s, user_id=user.id) == 1
    async with db() as s:
        assert await user_for_key(session=s, api_key=key) is None


async def test_user_names_are_unique(db):
    async with transaction(db) as s:
        await create_user(session=s, name="erin")
    with pytest.raises(UserExists):
        async with transaction(db) as s:
            await create_user(session=s, name="erin")


async def test_paper_account_made_once(db):
    user = await add_user(db)
    async with transaction(db) as s:
        first = await ensure_paper_account(session=s, user_id=user.id)
    async with transaction(db) as s:
        again = await ensure_paper_account(session=s, user_id=user.id)
    assert first.id == again.id and (first.broker, first.server_time, first.is_active) == ("paper", "utc", True)


async def test_setup_bot_creates_with_seed_defaults_then_updates_in_place(db):
    user = await add_user(db)
    account = await add_account(db, user)
    async with transaction(db) as s:
        bot = await setup_bot(session=s, user_id=user.id, account_id=account.id, symbol="XAUUSDm", auto_trade=True, strategies=None)
    assert (bot.engine_mode, bot.default_timeframe, bot.enabled_strategies, bot.auto_trade, bot.status) == (
        "scalper",
        "1m",
        strategy_names("scalper"),
        True,
        "active",
    )
    assert (bot.risk_max_concurrent_positions, bot.risk_max_per_symbol, bot.kill_switch_enabled, bot.decision_min_score) == (
        2,
        1,
        True,
        0.3,
    )
    assert (bot.max_trades_per_day, bot.default_qty, bot.default_sl_pips, bot.default_tp_pips) == (25, 0.01, 3.0, 5.0)

    async with transaction(db) as s:  # a person tunes the bot, and the kill switch stops it
        row = await s.get(Bot, bot.id)
        row.decision_min_score, row.status = 0.6, "killed"
    one = strategy_names("scalper")[:1]
    async with transaction(db) as s:
        again = await setup_bot(session=s, user_id=user.id, account_id=account.id, symbol="XAUUSDm", auto_trade=False, strategies=one)
    assert again.id == bot.id
    assert (again.enabled_strategies, again.auto_trade, again.decision_min_score, again.status) == (one, False, 0.6, "killed")
    async with db() as s:
        assert (await s.execute(select(func.count()).select_from(Bot))).scalar_one() == 1
        audits = (await s.execute(select(AuditLog).where(AuditLog.kind == "bot").order_by(AuditLog.id))).scalars().all()
    assert [a.message.split(":")[0] for a in audits] == ["bot created", "bot updated"]
    assert (audits[1].before["auto_trade"], audits[1].after["auto_trade"]) == (True, False)
    assert "decision_min_score" not in audits[1].after


async def test_setup_bot_same_settings_twice_writes_one_audit_row(db):
    user = await add_user(db)
    account = await add_account(db, user)
    for _ in range(2):
        async with transaction(db) as s:
            await setup_bot(session=s, user_id=user.id, account_id=account.id, symbol="XAUUSDm", auto_trade=True, strategies=None)
    async with db() as s:
        assert (await s.execute(select(func.count()).select_from(AuditLog).where(AuditLog.kind == "bot"))).scalar_one() == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"symbol": "NOPE"}, "no symbol spec"),
        ({"strategies": ["no_such_strategy"]}, "unknown scalper strategies"),
        ({"strategies": []}, "at least one strategy"),
        ({"engine_mode": "grid"}, "engine_mode"),
        ({"account_id": 999}, "no broker account"),
    ],
)
async def test_setup_bot_refuses_what_cannot_trade(db, fields, message):
    user = await add_user(db)
    account = await add_account(db, user)
    args = {"user_id": user.id, "account_id": account.id, "symbol": "XAUUSDm", "auto_trade": True, "strategies": None} | fields
    with pytest.raises(BotSetupError, match=message):
        async with transaction(db) as s:
            await setup_bot(session=s, **args)


async def test_setup_bot_refuses_another_users_account(db):
    alice, bob = await add_user(db, "alice"), await add_user(db, "bob")
    bobs = await add_account(db, bob)
    with pytest.raises(BotSetupError):
        async with transaction(db) as s:
            await setup_bot(session=s, user_id=alice.id, account_id=bobs.id, symbol="XAUUSDm", auto_trade=True)


async def test_demo_created_on_first_start_only(db):
    async with transaction(db) as s:
        key = await ensure_demo(session=s)
    assert key
    async with transaction(db) as s:
        assert await ensure_demo(session=s) is None
    async with db() as s:
        [user] = (await s.execute(select(User))).scalars().all()
        [account] = (await s.execute(select(BrokerAccount))).scalars().all()
        [bot] = (await s.execute(select(Bot))).scalars().all()
        assert (await user_for_key(session=s, api_key=key)).id == user.id
    assert user.name == "demo" and account.user_id == user.id and account.broker == "paper"
    assert (bot.user_id, bot.account_id, bot.symbol, bot.auto_trade, bot.engine_mode, bot.status) == (
        user.id,
        account.id,
        DEMO_SYMBOL,
        True,
        "scalper",
        "active",
    )
    assert bot.enabled_strategies == strategy_names("scalper") and bot.enabled_strategies
    assert key not in await all_cells(db)
