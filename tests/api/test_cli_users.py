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
