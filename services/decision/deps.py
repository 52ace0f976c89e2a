"""Dependencies of the decision API: a database session, and the user behind the `X-API-Key` header (or behind the
dashboard's session cookie, whose changes carry its CSRF token: services/decision/dashboard/auth.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader
from sqlalchemy.ext.asyncio import AsyncSession

from services.decision.users import user_for_key
from shared.db.models import User

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the key `scalper user create` printed")


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request; routes that change anything commit it themselves before they answer."""
    async with request.app.state.decision.sessions() as session:
        yield session


Session = Annotated[AsyncSession, Depends(get_session)]


async def current_user(request: Request, session: Session, api_key: Annotated[str | None, Security(api_key_header)]) -> User:
    if not api_key:
        from services.decision.dashboard.auth import cookie_user

        user = await cookie_user(request, session)
        if user is not None:
            return user
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "send your API key in the X-API-Key header", headers={"WWW-Authenticate": "APIKey"})
    user = await user_for_key(session=session, api_key=api_key)
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "this API key is unknown or revoked", headers={"WWW-Authenticate": "APIKey"})
    return user


CurrentUser = Annotated[User, Depends(current_user)]
