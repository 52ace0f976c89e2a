"""MT5 passwords at rest: sealed with the engine's key, references kept as references, the embedded key file 0600."""

from __future__ import annotations

import asyncio
import os
import stat

import pytest
from sqlalchemy import select

from services.decision import accounts
from services.executor.brokers.mt5 import resolve_secret
from shared import secrets
from shared.db.engine import create_engine, session_factory, transaction, upgrade
from shared.db.models import AuditLog, BrokerAccount, User
from shared.settings import Settings

KEY = secrets.new_key()


@pytest.fixture(autouse=True)
def no_installed_key(monkeypatch):
    """Each test chooses its key: none left over from another test (key_for installs the one it returns)."""
    monkeypatch.setattr(secrets, "_installed_key", None)
    monkeypatch.delenv("SCALPER_SECRET_KEY", raising=False)


def _settings(tmp_path, **kw) -> Settings:
    return Settings(_env_file=None, database_url=f"sqlite+aiosqlite:///{tmp_path / 'var' / 'scalper.db'}", **kw)


def test_a_sealed_password_opens_with_its_key_only():
    sealed = secrets.seal("s3cret-pw", KEY)
    assert sealed.startswith("enc:v1:") and "s3cret-pw" not in sealed
    assert secrets.seal("s3cret-pw", KEY) != sealed  # a fresh IV each time: equal passwords do not look equal
    assert secrets.open_secret(sealed, key=KEY) == "s3cret-pw"
    with pytest.raises(secrets.SecretError, match="does not open") as caught:
        secrets.open_secret(sealed, key=secrets.new_key())
    assert "s3cret-pw" not in str(caught.value)
    tampered = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    with pytest.raises(secrets.SecretError):
        secrets.open_secret(tampered, key=KEY)


def test_references_stay_references_and_open_where_they_point(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_MT5_PASSWORD", "from-env")
    secret_file = tmp_path / "mt5.secret"
    secret_file.write_text("from-file\n")
    for ref, value in (("env:TEST_MT5_PASSWORD", "from-env"), (f"file:{secret_file}", "from-file")):
        assert secrets.stored_form(ref, KEY) == ref
        assert secrets.open_secret(ref) == value == resolve_secret(ref)
    assert secrets.stored_form(None, KEY) is None and secrets.open_secret(None) is None


def test_a_legacy_clear_value_still_opens_and_is_reported(capsys):
    from shared.logging import configure_logging

    configure_logging("text", "INFO")
    assert secrets.open_secret("legacy-pw", key=KEY) == "legacy-pw"
    err = capsys.readouterr().err
    assert "stored in clear" in err and "legacy-pw" not in err


def test_the_key_rotates_new_first_old_still_opens():
    old, new = secrets.new_key(), secrets.new_key()
    sealed_old = secrets.seal("pw", old)
    assert secrets.open_secret(sealed_old, key=f"{new},{old}") == "pw"
    sealed_new = secrets.seal("pw", f"{new},{old}")
    assert secrets.open_secret(sealed_new, key=new) == "pw"


def test_a_passphrase_key_needs_32_characters():
    assert secrets.open_secret(secrets.seal("pw", "x" * 32), key="x" * 32) == "pw"
    with pytest.raises(secrets.SecretError, match="at least 32"):
        secrets.seal("pw", "short")


def test_embedded_creates_the_key_file_once_with_mode_0600(tmp_path):
    settings = _settings(tmp_path)
    key = secrets.key_for(settings, embedded=True)
    path = tmp_path / "var" / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == key
    assert secrets.key_for(settings, embedded=True) == key  # the second start reads it
    assert secrets.current_key() == key  # installed for the calls that name no key (resolve_secret)
    sealed = secrets.seal("pw", key)
    assert resolve_secret(sealed) == "pw"


def test_a_key_file_readable_by_others_is_closed_to_0600(tmp_path):
    settings = _settings(tmp_path)
    key = secrets.key_for(settings, embedded=True)
    path = secrets.key_file_path(settings)
    os.chmod(path, 0o644)
    assert secrets.key_for(settings, embedded=True) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_distributed_mode_requires_the_key(tmp_path):
    with pytest.raises(secrets.SecretKeyMissing, match="SCALPER_SECRET_KEY is required in distributed mode"):
        secrets.key_for(_settings(tmp_path), embedded=False)
    assert not (tmp_path / "var" / "secret.key").exists()
    assert secrets.key_for(_settings(tmp_path, secret_key=KEY), embedded=False) == KEY


def test_a_bad_key_fails_at_start(tmp_path):
    with pytest.raises(secrets.SecretError):
        secrets.key_for(_settings(tmp_path, secret_key="too-short"), embedded=False)


def test_a_password_too_long_for_the_column_is_refused():
    assert len(secrets.seal("p" * secrets.MAX_SEALED_BYTES, KEY)) <= 512  # broker_accounts.password_ref
    with pytest.raises(secrets.SecretError, match="at most"):
        secrets.seal("p" * (secrets.MAX_SEALED_BYTES + 1), KEY)


@pytest.fixture
async def sessions(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'accounts.db'}"
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    yield session_factory(engine)
    await engine.dispose()


async def _user(sessions) -> int:
    async with transaction(sessions) as session:
        user = User(name="alice")
        session.add(user)
        await session.flush()
        return user.id


async def _stored(sessions) -> list[str | None]:
    async with sessions() as session:
        return list((await session.execute(select(BrokerAccount.password_ref).order_by(BrokerAccount.id))).scalars())


async def test_accounts_store_a_literal_sealed_and_a_reference_as_it_is(sessions):
    owner = await _user(sessions)
    async with transaction(sessions) as session:
        literal = await accounts.create_account(session=session, owner_id=owner, actor="t", secret_key=KEY,
                                                values={"broker": "mt5", "login": "1", "server": "S", "password": "s3cret-pw"})
        await accounts.create_account(session=session, owner_id=owner, actor="t", secret_key=KEY,
                                      values={"broker": "mt5", "login": "2", "server": "S", "password": "env:MT5_PW"})
        assert accounts.public(literal)["password_set"] is True and "s3cret-pw" not in str(accounts.public(literal))
    sealed, ref = await _stored(sessions)
    assert sealed.startswith("enc:v1:") and secrets.open_secret(sealed, key=KEY) == "s3cret-pw"
    assert ref == "env:MT5_PW"

    async with transaction(sessions) as session:
        account = await session.get(BrokerAccount, literal.id)
        assert await accounts.update_account(session=session, account=account, values={"password": "s3cret-pw"},
                                             actor="t", secret_key=KEY) == []  # the same password: no change
        assert await accounts.update_account(session=session, account=account, values={"password": "n3w-pw"},
                                             actor="t", secret_key=KEY) == ["password"]
    sealed, _ = await _stored(sessions)
    assert sealed.startswith("enc:v1:") and secrets.open_secret(sealed, key=KEY) == "n3w-pw"


async def test_seal_clear_passwords_seals_legacy_rows_and_leaves_references(sessions):
    owner = await _user(sessions)
    async with transaction(sessions) as session:
        for ref in ("legacy-pw", "env:MT5_PW", "file:/run/secrets/mt5", secrets.seal("already", KEY), None):
            session.add(BrokerAccount(user_id=owner, name="mt5", broker="mt5", password_ref=ref))
    async with transaction(sessions) as session:
        assert await accounts.seal_clear_passwords(session=session, key=KEY) == 1
    async with transaction(sessions) as session:
        assert await accounts.seal_clear_passwords(session=session, key=KEY) == 0  # twice is safe
    legacy, env, file, already, none = await _stored(sessions)
    assert legacy.startswith("enc:v1:") and secrets.open_secret(legacy, key=KEY) == "legacy-pw"
    assert (env, file, none) == ("env:MT5_PW", "file:/run/secrets/mt5", None)
    assert secrets.open_secret(already, key=KEY) == "already"
    async with sessions() as session:
        messages = list((await session.execute(select(AuditLog.message))).scalars())
    assert messages == ["account password sealed at rest"]
