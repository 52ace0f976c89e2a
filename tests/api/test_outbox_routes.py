"""Kill, resume and kill-all with the outbox: they answer 200 whatever the bus does (the publish is the relay's), a
command for an account no executor serves yet waits in its queue, and POST /kill goes on past a bot that fails."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import httpx
import pytest
from api_helpers import new_account, new_bot
from fastapi import FastAPI

from services.decision import killswitch
from services.decision.app import mount
from services.decision.service import DecisionService
from services.decision.users import create_user
from shared.bus import topology
from shared.bus.memory import InMemoryBus
from shared.db.engine import transaction
from shared.messages import ExecutorCommand
from shared.outbox import OutboxRelay
from shared.timeutil import ManualClock
from tests.decision.decision_helpers import T0, eventually, make_settings


@dataclass
class MemoryApi:
    client: httpx.AsyncClient
    service: DecisionService
    bus: InMemoryBus
    sessions: object


async def add_person(sessions, name: str):
    async with transaction(sessions) as session:
        user, key = await create_user(session=session, name=name)
    return SimpleNamespace(id=user.id, headers={"X-API-Key": key})


@pytest.fixture
async def memory_api(api_db):
    """The API over the in-memory bus (started, as the embedded app runs it), with a fast-retrying relay."""
    bus = InMemoryBus()
    await bus.start()
    clock = ManualClock(T0)
    relay = OutboxRelay(bus=bus, sessions=api_db, retry_min_s=0.01, retry_max_s=0.05)
    service = DecisionService(bus=bus, sessions=api_db, clock=clock, settings=make_settings(), lookback_for=lambda c: 100, outbox=relay)
    app = FastAPI()
    mount(app, service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield MemoryApi(client=client, service=service, bus=bus, sessions=api_db)
    await service.stop()
    await bus.close()


def commands(api) -> list[tuple[str, ExecutorCommand]]:
    return api.bus.sent(topology.EXECUTION_COMMANDS)


async def test_routes_on_an_account_without_an_executor_answer_200_and_the_commands_wait_in_its_queue(memory_api):
    api = memory_api
    alice = await add_person(api.sessions, "alice")
    account = await new_account(api, alice)  # made after start-up: no executor has declared its queues
    bot = await new_bot(api, alice, account["id"])
    for path in (f"/api/v1/bots/{bot['id']}/kill", f"/api/v1/bots/{bot['id']}/resume", "/api/v1/kill"):
        answer = await api.client.post(path, headers=alice.headers)
        assert answer.status_code == 200, (path, answer.text)
    queue = topology.executor_commands_queue(account["id"])
    assert await api.bus.queue_depth(queue.name) == 3

    received: list[ExecutorCommand] = []

    async def executor(message, delivery):
        received.append(message)

    await api.bus.consume(queue, executor)  # the executor starts, with the same queue spec
    await api.bus.idle()
    assert [(c.command, c.bot_id) for c in received] == [("close_all", bot["id"]), ("resume_bot", bot["id"]), ("close_all", bot["id"])]
    assert api.service.outbox.unpublished == 0


async def test_routes_answer_200_while_the_bus_fails_and_the_relay_sends_later(api, alice):
    account = await new_account(api, alice)
    bot = await new_bot(api, alice, account["id"])
    api.bus.fail_publishes = 3  # the kill's close_all, the plan, and the close_all's first retry
    answer = await api.client.post(f"/api/v1/bots/{bot['id']}/kill", headers=alice.headers)
    assert answer.status_code == 200 and answer.json()["status"] == "killed"
    assert commands(api) == []
    await eventually(lambda: commands(api), timeout=10, what="the close_all published once the bus works")
    assert [(c.command, c.bot_id) for _, c in commands(api)] == [("close_all", bot["id"])]

    api.bus.fail_publishes = 1
    assert (await api.client.post(f"/api/v1/bots/{bot['id']}/resume", headers=alice.headers)).status_code == 200
    api.bus.fail_publishes = 1
    answer = await api.client.post("/api/v1/kill", headers=alice.headers)
    assert answer.status_code == 200 and answer.json() == {"killed": [bot["id"]], "failed": [], "commands": 1}
    await eventually(lambda: len(commands(api)) == 3, timeout=10, what="resume and kill-all published")
    assert [c.command for _, c in commands(api)] == ["close_all", "resume_bot", "close_all"]


async def test_kill_all_goes_on_past_a_bot_that_fails_and_lists_it(api, alice, monkeypatch):
    account = await new_account(api, alice)
    gold = await new_bot(api, alice, account["id"])
    euro = await new_bot(api, alice, account["id"], symbol="EURUSD")
    cable = await new_bot(api, alice, account["id"], symbol="GBPUSD")
    real = killswitch.stop_bot

    def stop_bot(*, bot, **kw):
        if bot.id == euro["id"]:
            raise RuntimeError("bot row locked by a migration (test)")
        return real(bot=bot, **kw)

    monkeypatch.setattr(killswitch, "stop_bot", stop_bot)
    answer = await api.client.post("/api/v1/kill", headers=alice.headers)
    assert answer.status_code == 200
    assert answer.json() == {
        "killed": [gold["id"], cable["id"]],
        "failed": [{"bot_id": euro["id"], "reason": "RuntimeError: bot row locked by a migration (test)"}],
        "commands": 2,
    }
    assert [(c.command, c.bot_id) for _, c in commands(api)] == [("close_all", gold["id"]), ("close_all", cable["id"])]
    statuses = {b["id"]: b["status"] for b in (await api.client.get("/api/v1/bots", headers=alice.headers)).json()["data"]}
    assert statuses == {gold["id"]: "killed", euro["id"]: "active", cable["id"]: "killed"}
    audit = (await api.client.get(f"/api/v1/audit?bot_id={euro['id']}&kind=bot", headers=alice.headers)).json()["data"]
    assert not any(entry["after"] and entry["after"].get("status") == "killed" for entry in audit)
