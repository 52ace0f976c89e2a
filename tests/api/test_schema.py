"""Property tests against the OpenAPI schema (schemathesis): no 5xx, every answer documented and matching its schema.

The API runs in a real uvicorn server on a free port, on its own SQLite file, with two users and some trading records.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from contextlib import asynccontextmanager

import httpx
import pytest
import schemathesis
from schemathesis.specs.openapi.checks import allow_header_conformance, negative_data_rejection, positive_data_acceptance
import uvicorn
from fastapi import FastAPI
from hypothesis import HealthCheck, settings

from services.decision.app import mount
from services.decision.service import DecisionService
from services.decision.users import create_user
from shared.db.engine import create_engine, session_factory, transaction, upgrade
from shared.timeutil import ManualClock
from tests.decision.decision_helpers import T0, RecordingBus, make_settings

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _seed(url: str) -> dict:
    engine = create_engine(url)
    try:
        async with transaction(session_factory(engine)) as session:
            _, alice = await create_user(session=session, name="alice")
            _, bob = await create_user(session=session, name="bob")
        return {"alice": alice, "bob": bob}
    finally:
        await engine.dispose()


def _app(url: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = create_engine(url)
        service = DecisionService(
            bus=RecordingBus(), sessions=session_factory(engine), clock=ManualClock(T0), settings=make_settings(), lookback_for=lambda c: 100
        )
        mount(app, service)
        app.openapi_schema = None
        yield
        await engine.dispose()

    return FastAPI(title="decision API under test", lifespan=lifespan)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('schema') / 'api.db'}"
    upgrade(url)
    keys = asyncio.run(_seed(url))
    port = _free_port()
    config = uvicorn.Config(_app(url), host="127.0.0.1", port=port, log_config=None, log_level="warning", lifespan="on")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.05)
    headers = {"X-API-Key": keys["alice"]}
    # Some records to read: an account, a bot, a signal decided (through the API's own service would need the bus;
    # the generated requests create and change plenty more).
    account = httpx.post(f"{base}/api/v1/accounts", json={"name": "paper"}, headers=headers).json()
    httpx.post(f"{base}/api/v1/bots", json={"account_id": account["id"], "symbol": "XAUUSDm", "auto_trade": True}, headers=headers)
    yield base, keys
    srv.should_exit = True
    thread.join(timeout=10)


def _schema_document() -> dict:
    """The OpenAPI document the server serves (the routes do not need a running service to be described)."""
    app = FastAPI(title="decision API under test")
    mount(app, service=None)
    return app.openapi()


# DELETE /keys/{id} would revoke the key the test calls with; the isolation tests cover it.
schema = schemathesis.openapi.from_dict(_schema_document()).exclude(method="DELETE", path="/api/v1/keys/{key_id}")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_is_documented_and_never_a_server_error(case, server):
    base, keys = server
    # Starlette answers 405 with the methods of the first route matching the path only (GET and POST of one path are two
    # FastAPI routes), so the Allow-header check is left out: a framework limit, not an answer of ours. And a request the
    # schema allows may still be refused with a 422 that says why (an account that is not yours, a strategy the catalog
    # does not know, a symbol without a spec): rules a JSON schema cannot state, so positive_data_acceptance is left out.
    # negative_data_rejection is left out too: a schema-violating query value can serialise to a valid one
    # (`bot_id=[1]` or `true` is sent as `bot_id=1`), which then rightly answers 200. The 422s are tested one by one
    # in test_bots_api.py and test_lists.py; negative cases are still generated here, to find 5xx and undocumented answers.
    case.call_and_validate(
        base_url=base,
        headers={"X-API-Key": keys["alice"]},
        excluded_checks=[allow_header_conformance, positive_data_acceptance, negative_data_rejection],
    )
