"""The executor's leader lock on PostgreSQL: one holder per account; a standby takes it when the holder's connection
dies, and a holder whose connection died takes it again instead of believing it still leads."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from services.executor.leadership import AdvisoryLock

pytestmark = pytest.mark.services


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def test_one_holder_per_account_and_the_lock_is_taken_again_after_its_connection_died(pg_url):
    async def run() -> None:
        active, standby = AdvisoryLock(pg_url), AdvisoryLock(pg_url)
        try:
            assert await active.try_acquire([1, 2]) and active.held
            assert not await standby.try_acquire([2, 3]) and not standby.held  # all or none: 3 alone is not taken
            assert await standby.try_acquire([3])
            admin = await asyncpg.connect(_dsn(pg_url))
            try:  # the active process's lock connection dies (a database restart, a network cut)
                await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                                    "AND objid IN (1, 2) AND pid <> pg_backend_pid()")
            finally:
                await admin.close()
            for _ in range(50):
                if await standby.try_acquire([1, 2]):
                    break
                await asyncio.sleep(0.1)
            assert standby.held and await standby.try_acquire([1, 2, 3])
            assert not await active.try_acquire([1, 2])  # it sees its locks gone and does not lead on a dead lock
        finally:
            await active.release()
            await standby.release()

    asyncio.run(run())
