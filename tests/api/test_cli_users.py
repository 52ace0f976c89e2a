"""`scalper user create NAME [--admin]`, `scalper user revoke-key NAME` and `scalper bot setup` on a real SQLite file."""

from __future__ import annotations

import asyncio
import json

from typer.testing import CliRunner

from scalper.cli import app
from services.decision.users import user_for_key
from shared.db.engine import create_engine, session_factory


def _user_for(url: str, key: str):
    async def look():
        engine = create_engine(url)
        try:
            async with session_factory(engine)() as session:
                return await user_for_key(session=session, api_key=key)
        finally:
            await engine.dispose()

    return asyncio.run(look())


def test_create_admin_then_revoke_its_keys(tmp_path, monkeypatch):
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("SCALPER_DATABASE_URL", url)
    runner = CliRunner()
    made = runner.invoke(app, ["user", "create", "ops", "--admin"])
    assert made.exit_code == 0, made.output
    first, second = made.output.strip().splitlines()[:2]
    assert json.loads(first) == {"id": 1, "name": "ops", "is_admin": True}
    key = second.rsplit(": ", 1)[1]
    assert _user_for(url, key).name == "ops"

    again = runner.invoke(app, ["user", "create", "ops"])
    assert again.exit_code == 2 and "exists already" in again.output

    revoked = runner.invoke(app, ["user", "revoke-key", "ops"])
    assert revoked.exit_code == 0 and json.loads(revoked.output) == {"user": "ops", "revoked_keys": 1}
    assert _user_for(url, key) is None
    missing = runner.invoke(app, ["user", "revoke-key", "nobody"])
    assert missing.exit_code == 2 and "no user named" in missing.output


def _paper_account(url: str, user_id: int) -> int:
    from services.decision.users import ensure_paper_account
    from shared.db.engine import transaction

    async def make():
        engine = create_engine(url)
        try:
            async with transaction(session_factory(engine)) as session:
                return (await ensure_paper_account(session=session, user_id=user_id)).id
        finally:
            await engine.dispose()

    return asyncio.run(make())


def test_bot_setup_changes_only_the_options_it_is_given(tmp_path, monkeypatch):
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("SCALPER_DATABASE_URL", url)
    runner = CliRunner()
    assert runner.invoke(app, ["user", "create", "trader"]).exit_code == 0
    account = _paper_account(url, 1)
    base = ["bot", "setup", "--symbol", "XAUUSDm", "--user-id", "1", "--account-id", str(account)]

    def setup(*args: str) -> dict:
        result = runner.invoke(app, [*base, *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    new = setup()
    assert new["auto_trade"] is False and len(new["enabled_strategies"]) > 1, "a new bot: off, every strategy"
    on = setup("--auto-trade", "--strategies", "price_action_pinbar")
    assert on["id"] == new["id"] and on["auto_trade"] is True and on["enabled_strategies"] == ["price_action_pinbar"]
    again = setup()  # nothing given: nothing changes (it used to turn auto-trading off and every strategy back on)
    assert again["auto_trade"] is True and again["enabled_strategies"] == ["price_action_pinbar"]
    assert setup("--no-auto-trade")["auto_trade"] is False
    assert setup()["enabled_strategies"] == ["price_action_pinbar"]
