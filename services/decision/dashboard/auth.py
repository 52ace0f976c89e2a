"""The dashboard's session: a signed cookie set by `POST /login` (a user's name and one of their live API keys), and
the CSRF token every action authenticated by that cookie must carry.

The cookie holds the user's id, the key's id and a random CSRF token, signed (itsdangerous, HMAC-SHA256) with a key
derived from the install's secret key, so sessions survive a restart and a revoked key ends its sessions at the next
request. It is HttpOnly (no script reads it) and SameSite=Strict; the page gets the CSRF token in a <meta> tag and
sends it back in the X-CSRF-Token header (fetch) or a `csrf_token` form field. The API key itself is never put in
the cookie, a URL or a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import HTTPException, Request, Response, status
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.decision.users import hash_api_key
from shared.db.models import ApiKey, User

COOKIE = "scalper_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
MAX_AGE_S = 8 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_serializers: dict[str, URLSafeTimedSerializer] = {}


def _serializer() -> URLSafeTimedSerializer:
    from shared.secrets import current_key

    key = current_key()
    found = _serializers.get(key)
    if found is None:
        # A key of its own, derived from the install's: a cookie signature tells nothing about the passwords' key.
        derived = hmac.new(key.encode(), b"scalper dashboard session", hashlib.sha256).hexdigest()
        found = _serializers[key] = URLSafeTimedSerializer(derived, salt="dashboard")
    return found


@dataclass(frozen=True, slots=True)
class Login:
    user: User
    key_id: int
    csrf: str


def _read(request: Request) -> dict | None:
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        data = _serializer().loads(raw, max_age=MAX_AGE_S)
    except BadSignature:  # also SignatureExpired: an old or forged cookie is no session
        return None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), t) for k, t in (("u", int), ("k", int), ("c", str))):
        return None
    return data


async def session_login(request: Request, session: AsyncSession) -> Login | None:
    """The login the request's cookie proves, or None (no cookie, a bad signature, a revoked key)."""
    data = _read(request)
    if data is None:
        return None
    stmt = select(User).join(ApiKey, ApiKey.user_id == User.id).where(
        ApiKey.id == data["k"], ApiKey.revoked_at.is_(None), User.id == data["u"]
    )
    user = (await session.execute(stmt)).scalar_one_or_none()
    return None if user is None else Login(user=user, key_id=data["k"], csrf=data["c"])


def check_csrf(request: Request, login: Login, *, form_token: str | None = None) -> None:
    """A cookie-authenticated request that changes anything must echo the session's CSRF token (403 otherwise)."""
    if request.method in SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER) or form_token or ""
    if not hmac.compare_digest(sent.encode(), login.csrf.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "missing or wrong CSRF token: reload the page and try again")


async def cookie_user(request: Request, session: AsyncSession) -> User | None:
    """For the API's own routes: the cookie's user (CSRF checked on a change), or None when there is no session."""
    login = await session_login(request, session)
    if login is None:
        return None
    check_csrf(request, login)
    return login.user


async def log_in(session: AsyncSession, *, name: str, api_key: str) -> tuple[User, int] | None:
    """The user and key id for a name and one of that user's live keys; None otherwise (which of the two was wrong
    is not told)."""
    stmt = select(User, ApiKey.id).join(ApiKey, ApiKey.user_id == User.id).where(
        User.name == name.strip(), ApiKey.key_hash == hash_api_key(api_key), ApiKey.revoked_at.is_(None)
    )
    found = (await session.execute(stmt)).first()
    return None if found is None else (found[0], found[1])


def set_session(response: Response, request: Request, *, user_id: int, key_id: int) -> None:
    token = _serializer().dumps({"u": user_id, "k": key_id, "c": secrets.token_urlsafe(24)})
    response.set_cookie(
        COOKIE, token, max_age=MAX_AGE_S, httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/"
    )


def clear_session(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
