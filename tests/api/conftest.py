"""Fixtures of the API tests: the decision API on SQLite with a recording bus, and two users with their keys."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from services.decision.app import mount
from services.decision.service import DecisionService
from services.decision.users import create_user
from shared.db.engine import transaction
from shared.timeutil import ManualClock
from tests.decision.decision_helpers import T0, RecordingBus, make_settings

# The PostgreSQL fixtures of the decision tests (their conftest imports its helpers as a top-level module).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "decision"))
from tests.decision.conftest import pg_database, pg_sessions  # noqa: E402, F401  (fixtures)


@dataclass
class Person:
    id: int
    name: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}


@dataclass
class Api:
    client: httpx.AsyncClient
    service: DecisionService
    bus: RecordingBus
    clock: ManualClock
    sessions: object
    app: FastAPI


async def add_person(sessions, name: str, *, is_admin: bool = False) -> Person:
    async with transaction(sessions) as session:
        user, key = await create_user(session=session, name=name, is_admin=is_admin)
        return Person(id=user.id, name=name, key=key)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def api_db(request):
    """The API's database: SQLite, then PostgreSQL (the two the engine runs on)."""
    return request.getfixturevalue("sessions" if request.param == "sqlite" else "pg_sessions")


@pytest.fixture
async def api(api_db) -> Api:
    sessions = api_db
    bus = RecordingBus()
    clock = ManualClock(T0)
    service = DecisionService(bus=bus, sessions=sessions, clock=clock, settings=make_settings(), lookback_for=lambda configs: 100)
    app = FastAPI()
    mount(app, service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield Api(client=client, service=service, bus=bus, clock=clock, sessions=sessions, app=app)
    await service.stop()  # the outbox relay's retry task, if a publish failed


@pytest.fixture
async def alice(api) -> Person:
    return await add_person(api.sessions, "alice")


@pytest.fixture
async def bob(api) -> Person:
    return await add_person(api.sessions, "bob")
