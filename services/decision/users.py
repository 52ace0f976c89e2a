"""Users, their API keys (stored as SHA-256 only) and their paper accounts.

Functions here add and flush; the caller's transaction commits. A key is returned once and never logged.
"""

from __future__ import annotations

import hashlib
import secrets

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.decision import audit
from shared.db.models import ApiKey, BrokerAccount, User
from shared.timeutil import utcnow

KEY_PREFIX_CHARS = 8


class UserExists(ValueError):
    pass


def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


async def issue_api_key(*, session: AsyncSession, user_id: int, now: datetime | None = None) -> tuple[ApiKey, str]:
    """Make a new key for the user; return its row and the key itself (which is not stored). `now`: the service clock's."""
    api_key = secrets.token_urlsafe(32)
    now = now or utcnow()
    row = ApiKey(user_id=user_id, prefix=api_key[:KEY_PREFIX_CHARS], key_hash=hash_api_key(api_key), created_at=now)
    session.add(row)
    await session.flush()
    audit.record(
        session=session,
        kind="key",
        entity_id=row.id,
        user_id=user_id,
        actor=f"user:{user_id}",
        message=f"api key {row.prefix}... issued",
        at=now,
    )
    return row, api_key


async def create_user(*, session: AsyncSession, name: str, is_admin: bool = False, actor: str = "cli") -> tuple[User, str]:
    """Create a user with one API key; return the user and the key (shown once, stored only as its hash)."""
    name = name.strip()
    if not name:
        raise ValueError("a user needs a name")
    existing = (await session.execute(select(User).where(User.name == name))).scalar_one_or_none()
    if existing is not None:
        raise UserExists(f"user {name!r} exists already (id {existing.id})")
    user = User(name=name, is_admin=is_admin)
    session.add(user)
    await session.flush()
    audit.record(
        session=session,
        kind="user",
        entity_id=user.id,
        user_id=user.id,
        actor=actor,
        message=f"user {name} created",
        after={"name": name, "is_admin": is_admin},
    )
    _, api_key = await issue_api_key(session=session, user_id=user.id)
    return user, api_key


async def user_for_key(*, session: AsyncSession, api_key: str) -> User | None:
    """The user an unrevoked key belongs to, or None."""
    stmt = select(User).join(ApiKey, ApiKey.user_id == User.id).where(ApiKey.key_hash == hash_api_key(api_key), ApiKey.revoked_at.is_(None))
    return (await session.execute(stmt)).scalar_one_or_none()


async def revoke_keys(*, session: AsyncSession, user_id: int, actor: str = "cli") -> int:
    """Revoke every live key of the user; return how many."""
    rows = (await session.execute(select(ApiKey).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None)))).scalars().all()
    now = utcnow()
    for row in rows:
        row.revoked_at = now
        audit.record(session=session, kind="key", entity_id=row.id, user_id=user_id, actor=actor, message=f"api key {row.prefix}... revoked")
    await session.flush()
    return len(rows)


async def ensure_paper_account(*, session: AsyncSession, user_id: int) -> BrokerAccount:
    """The user's active paper account, created (UTC server time, no symbol suffix) when there is none."""
    stmt = (
        select(BrokerAccount)
        .where(BrokerAccount.user_id == user_id, BrokerAccount.broker == "paper", BrokerAccount.is_active.is_(True))
        .order_by(BrokerAccount.id)
        .limit(1)
    )
    account = (await session.execute(stmt)).scalar_one_or_none()
    if account is not None:
        return account
    account = BrokerAccount(user_id=user_id, name="paper", broker="paper", server_time="utc", is_demo=True, is_active=True)
    session.add(account)
    await session.flush()
    audit.record(
        session=session,
        kind="account",
        entity_id=account.id,
        user_id=user_id,
        message="paper account created",
        after={"broker": "paper", "server_time": "utc"},
    )
    return account


async def revoke_key(*, session: AsyncSession, user_id: int, key_id: int, actor: str, now: datetime | None = None) -> ApiKey | None:
    """Revoke one of the user's keys (again is a no-op); None when the user has no key with this id."""
    row = await session.get(ApiKey, key_id)
    if row is None or row.user_id != user_id:
        return None
    if row.revoked_at is None:
        row.revoked_at = now or utcnow()
        audit.record(session=session, kind="key", entity_id=row.id, user_id=user_id, actor=actor,
                     message=f"api key {row.prefix}... revoked", at=row.revoked_at)
        await session.flush()
    return row


async def user_by_name(*, session: AsyncSession, name: str) -> User | None:
    return (await session.execute(select(User).where(User.name == name.strip()))).scalar_one_or_none()
