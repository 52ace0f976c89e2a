"""Database outages: a handler waits for the database to come back instead of spending its message's deliveries.

The bus alone would requeue a message a few times within a second and then dead-letter it, so a database restart of a
few seconds would dead-letter work. Handlers are idempotent, so running one again is safe. Services take a `Patience`
as a collaborator, in both run modes: `DatabasePatience` in production, `NO_PATIENCE` where a test wants the raw error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from shared.logging import get_logger

log = get_logger(__name__)

DB_RETRY_S = 60.0  # how long a handler keeps retrying while the database is unreachable, before the bus takes over


def is_db_unreachable(exc: BaseException) -> bool:
    """A lost or refused database connection (restart, failover), as opposed to an error in the statement."""
    import asyncpg
    from sqlalchemy import exc as sa_exc

    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        if isinstance(current, ConnectionError | OSError | asyncpg.exceptions.OperatorInterventionError
                      | asyncpg.exceptions.ConnectionDoesNotExistError | asyncpg.exceptions.CannotConnectNowError):
            return True
        if isinstance(current, asyncpg.exceptions.InterfaceError) and "connection" in str(current).lower():
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
        seen += 1
    return False


class Patience(Protocol):
    """How a handler meets an unreachable database."""

    async def run(self, call: Callable[[], Awaitable[None]], *, what: str) -> None: ...


class NoPatience:
    """Run once: the error goes to the bus (redelivery, then the dead letters)."""

    async def run(self, call: Callable[[], Awaitable[None]], *, what: str) -> None:
        await call()


class DatabasePatience:
    """Run `call` again and again with back-off while the database is unreachable, for at most `retry_s`."""

    def __init__(self, retry_s: float = DB_RETRY_S) -> None:
        self.retry_s = retry_s

    async def run(self, call: Callable[[], Awaitable[None]], *, what: str) -> None:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_db_unreachable), stop=stop_after_delay(self.retry_s),
            wait=wait_exponential(multiplier=0.2, max=2.0), reraise=True,
            before_sleep=lambda state: log.warning(
                "database unreachable: handler retried", handler=what, attempt=state.attempt_number,
                error=repr(state.outcome.exception()),
            ),
        ):
            with attempt:
                await call()


NO_PATIENCE = NoPatience()
