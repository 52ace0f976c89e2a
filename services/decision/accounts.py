"""Broker accounts of a user: create, read, change. The MT5 password is write-only: stored, never returned or logged.

Functions here add and flush; the caller's transaction commits.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.decision import audit
from shared.db.models import BrokerAccount

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


async def create_account(*, session: AsyncSession, owner_id: int, values: dict, actor: str) -> BrokerAccount:
    values = dict(values)
    password = values.pop("password", None)
    if not values.get("name"):
        values["name"] = values.get("broker", "paper") + (f" {values['login']}" if values.get("login") else "")
    account = BrokerAccount(user_id=owner_id, password_ref=password, **values)
    session.add(account)
    await session.flush()
    audit.record(
        session=session, kind="account", entity_id=account.id, user_id=owner_id, actor=actor,
        message=f"account created: {account.broker} {account.login or ''}".strip(), after={**_state(account), "password_set": bool(password)},
    )
    return account


async def update_account(*, session: AsyncSession, account: BrokerAccount, values: dict, actor: str) -> list[str]:
    before = _state(account)
    password_changed = False
    for name, value in values.items():
        if name == "password":
            if value is not None and value != account.password_ref:
                account.password_ref = value
                password_changed = True
            continue
        if value is None and name not in ("login", "server", "max_volume"):
            continue
        setattr(account, name, value)
    after = _state(account)
    changed = [k for k in after if after[k] != before[k]]
    if changed or password_changed:
        audit.record(
            session=session, kind="account", entity_id=account.id, user_id=account.user_id, actor=actor,
            message=f"account updated: {', '.join(changed + (['password'] if password_changed else []))}",
            before={k: before[k] for k in changed}, after={**{k: after[k] for k in changed}, **({"password": "changed"} if password_changed else {})},
        )
    await session.flush()
    return changed + (["password"] if password_changed else [])
