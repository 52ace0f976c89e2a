"""Broker accounts of a user: create, read, change. The MT5 password is write-only: stored, never returned or logged.

A literal password is stored sealed with the engine's key (`enc:v1:...`, shared/secrets.py); `env:NAME` and `file:/path`
stay references; nothing is stored in clear. Functions here add and flush; the caller's transaction commits.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.decision import audit
from shared import secrets
from shared.db.models import BrokerAccount
from shared.logging import get_logger

log = get_logger(__name__)

# Shown in the audit log; the password never is (only whether it changed).
_AUDITED = ("name", "broker", "login", "server", "server_time", "symbol_suffix", "margin_mode", "currency", "is_demo", "is_active", "leverage", "max_volume")


class AccountNotFound(LookupError):
    pass


def _state(account: BrokerAccount) -> dict:
    return {name: getattr(account, name) for name in _AUDITED}


def public(account: BrokerAccount) -> dict:
    out = {name: getattr(account, name) for name in (*_AUDITED, "id", "created_at")}
    out["password_set"] = bool(account.password_ref)
    return out


async def list_accounts(*, session: AsyncSession, owner_id: int) -> list[BrokerAccount]:
    return list((await session.execute(select(BrokerAccount).where(BrokerAccount.user_id == owner_id).order_by(BrokerAccount.id))).scalars())


async def get_account(*, session: AsyncSession, owner_id: int, account_id: int) -> BrokerAccount:
    account = await session.get(BrokerAccount, account_id)
    if account is None or account.user_id != owner_id:
        raise AccountNotFound(f"no account {account_id}")
    return account


async def create_account(*, session: AsyncSession, owner_id: int, values: dict, actor: str,
                         secret_key: str | None = None, now: datetime | None = None) -> BrokerAccount:
    """`secret_key` seals a literal password (default: the key of this process, shared.secrets.current_key); `now` is
    the service clock's time (a route's), stamped on the row and its audit entry."""
    values = dict(values)
    password = values.pop("password", None)
    if not values.get("name"):
        values["name"] = values.get("broker", "paper") + (f" {values['login']}" if values.get("login") else "")
    stamp = {} if now is None else {"created_at": now}
    account = BrokerAccount(user_id=owner_id, password_ref=secrets.stored_form(password, secret_key), **stamp, **values)
    session.add(account)
    await session.flush()
    audit.record(
        session=session, kind="account", entity_id=account.id, user_id=owner_id, actor=actor, at=now,
        message=f"account created: {account.broker} {account.login or ''}".strip(), after={**_state(account), "password_set": bool(password)},
    )
    return account


def _same_password(stored: str | None, given: str, key: str | None) -> bool:
    if secrets.is_sealed(stored) and not secrets.is_reference(given) and not secrets.is_sealed(given):
        try:
            return secrets.unseal(stored, key or secrets.current_key()) == given
        except secrets.SecretError:
            return False  # sealed under a key this engine no longer has: the new one replaces it
    return stored == given


async def update_account(*, session: AsyncSession, account: BrokerAccount, values: dict, actor: str,
                         secret_key: str | None = None, now: datetime | None = None) -> list[str]:
    before = _state(account)
    password_changed = False
    for name, value in values.items():
        if name == "password":
            if value is not None and not _same_password(account.password_ref, value, secret_key):
                account.password_ref = secrets.stored_form(value, secret_key)
                password_changed = True
            continue
        if value is None and name not in ("login", "server", "max_volume"):
            continue
        setattr(account, name, value)
    after = _state(account)
    changed = [k for k in after if after[k] != before[k]]
    if changed or password_changed:
        audit.record(
            session=session, kind="account", entity_id=account.id, user_id=account.user_id, actor=actor, at=now,
            message=f"account updated: {', '.join(changed + (['password'] if password_changed else []))}",
            before={k: before[k] for k in changed}, after={**{k: after[k] for k in changed}, **({"password": "changed"} if password_changed else {})},
        )
    await session.flush()
    return changed + (["password"] if password_changed else [])


async def seal_clear_passwords(*, session: AsyncSession, key: str, actor: str = "startup") -> int:
    """Seal every password stored in clear (rows from before sealing); return how many. References stay as they are.

    An Alembic migration cannot do this (it has no key): decision's start calls it once the key is known."""
    rows = (await session.execute(select(BrokerAccount).where(BrokerAccount.password_ref.is_not(None)))).scalars().all()
    sealed = 0
    for account in rows:
        if not secrets.is_clear(account.password_ref):
            continue
        account.password_ref = secrets.seal(account.password_ref, key)
        sealed += 1
        audit.record(session=session, kind="account", entity_id=account.id, user_id=account.user_id, actor=actor,
                     message="account password sealed at rest", after={"password": "sealed"})
    if sealed:
        await session.flush()
        log.info("broker account passwords stored in clear are now sealed", accounts=sealed)
    return sealed
