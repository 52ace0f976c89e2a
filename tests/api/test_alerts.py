"""Alerts reach people: a user's notification URLs (apprise) get order filled, position closed and kill switch
tripped, and Alertmanager's alerts through its webhook; tested against a local HTTP receiver (apprise's json://),
never a real service. Sending is off the decision path: a dead URL is counted and logged, and decisions go on."""

from __future__ import annotations

import json
import socket
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI

from services.decision.alerts import Notifier
from services.decision.alerts_api import attach
from services.decision.app import mount
from services.decision.service import DecisionService
from shared.messages import ExecutionReport
from shared.secrets import key_for
from shared.settings import Settings
from shared.timeutil import ManualClock
from tests.api.api_helpers import decide, fill_and_close, new_account, new_bot, snapshot
from tests.api.conftest import Api, add_person
from tests.decision.decision_helpers import T0, RecordingBus, make_settings


class Receiver:
    """A local HTTP server that records each JSON body posted to it."""

    def __init__(self) -> None:
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802  (http.server's name)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                bodies.append({"path": self.path, **json.loads(raw or b"{}")})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):  # no request lines on stderr
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def titles(self, path: str) -> list[str]:
        return [b["title"] for b in self.bodies if b["path"] == f"/{path}"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(autouse=True)
def secret_key():
    key_for(Settings(_env_file=None, secret_key=Fernet.generate_key().decode()), embedded=False)


@pytest.fixture
async def alerting(api_db):
    bus = RecordingBus()
    service = DecisionService(bus=bus, sessions=api_db, clock=ManualClock(T0),
                              settings=make_settings(service_token="service-token-for-tests"), lookback_for=lambda configs: 100)
    notifier = attach(service, api_db)
    app = FastAPI()
    mount(app, service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield Api(client=client, service=service, bus=bus, clock=service.clock, sessions=api_db, app=app), notifier
    await notifier.stop()
    await service.stop()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_users_urls_get_fills_closes_and_the_kill_switch_and_no_one_elses(alerting, receiver):
    api, notifier = alerting
    alice, bob = await add_person(api.sessions, "alice"), await add_person(api.sessions, "bob")
    added = await api.client.post("/api/v1/notifications", json={"url": receiver.url("alice"), "label": "phone"}, headers=alice.headers)
    assert added.status_code == 201 and added.json()["scheme"] == "json" and "url" not in added.json()
    listed = (await api.client.get("/api/v1/notifications", headers=alice.headers)).json()
    assert listed["count"] == 1 and str(receiver.port) not in json.dumps(listed)
    assert (await api.client.post("/api/v1/notifications", json={"url": receiver.url("bob")}, headers=bob.headers)).status_code == 201
    for refused in ("nonsense://secret-token", "json://host/" + "secret-token" * 200):
        bad = await api.client.post("/api/v1/notifications", json={"url": refused}, headers=alice.headers)
        assert bad.status_code == 422 and "secret-token" not in bad.text

    account = await new_account(api, alice)
    bot = await new_bot(api, alice, account["id"], kill_switch_max_daily_loss_pct=1.0)
    await api.service.handle_account_snapshot(snapshot(account["id"], balance=10_000.0))
    _, intent = await decide(api, bot["id"])
    await fill_and_close(api, intent, ticket=501, pnl=-250.0)  # filled, opened, closed at a loss past 1 %
    await notifier.idle()
    titles = receiver.titles("alice")
    assert any(t.startswith(f"Order filled: {intent.symbol} buy {intent.volume}") for t in titles), titles
    assert any(t.startswith("Position closed:") and "-250.0" in t for t in titles), titles
    assert any(t.startswith(f"Kill switch tripped: bot {bot['id']}") for t in titles), titles
    assert receiver.titles("bob") == []  # bob's URL hears nothing of alice's bots

    # the executor redelivers its report: no second message
    before = len(receiver.bodies)
    await api.service.handle_execution_report(ExecutionReport(
        client_order_id=intent.client_order_id, account_id=intent.account_id, bot_id=intent.bot_id, status="filled",
        ticket=501, price=intent.sl + 2.0, volume=intent.volume, filled_at=T0 + timedelta(minutes=1)))
    await notifier.idle()
    assert len(receiver.bodies) == before

    bobs = (await api.client.get("/api/v1/notifications", headers=bob.headers)).json()["data"][0]["id"]
    assert (await api.client.post(f"/api/v1/notifications/{bobs}/test", headers=alice.headers)).status_code == 404
    test = await api.client.post(f"/api/v1/notifications/{bobs}/test", headers=bob.headers)
    assert test.json() == {"sent": True} and receiver.titles("bob") == ["Scalper test alert"]
    assert (await api.client.delete(f"/api/v1/notifications/{bobs}", headers=alice.headers)).status_code == 404
    assert (await api.client.delete(f"/api/v1/notifications/{bobs}", headers=bob.headers)).status_code == 204
    assert (await api.client.get("/api/v1/notifications", headers=bob.headers)).json()["count"] == 0


async def test_a_dead_url_is_counted_and_decisions_go_on(alerting, receiver):
    api, notifier = alerting
    alice = await add_person(api.sessions, "alice")
    dead = f"json://127.0.0.1:{_closed_port()}/gone"
    assert (await api.client.post("/api/v1/notifications", json={"url": dead}, headers=alice.headers)).status_code == 201
    assert (await api.client.post("/api/v1/notifications", json={"url": receiver.url("ok")}, headers=alice.headers)).status_code == 201
    account = await new_account(api, alice)
    bot = await new_bot(api, alice, account["id"])
    _, intent = await decide(api, bot["id"])
    await fill_and_close(api, intent, ticket=601, pnl=12.0)
    positions = (await api.client.get("/api/v1/positions", headers=alice.headers)).json()["data"]
    assert positions[0]["status"] == "closed"  # recorded whatever the URLs do
    await notifier.idle()
    assert notifier.failed == 2 and notifier.sent == 2  # the fill and the close: each failed at one URL, sent at the other
    assert len(receiver.titles("ok")) == 2


async def test_alertmanager_webhook_fans_out_to_every_users_urls_with_the_service_token(alerting, receiver):
    api, notifier = alerting
    alice, bob = await add_person(api.sessions, "alice"), await add_person(api.sessions, "bob")
    for person in (alice, bob):
        await api.client.post("/api/v1/notifications", json={"url": receiver.url(person.name)}, headers=person.headers)
    payload = {"version": "4", "status": "firing", "alerts": [
        {"status": "firing", "labels": {"alertname": "ExecutorDown", "instance": "executor:8003"}, "fingerprint": "ab12",
         "annotations": {"summary": "The executor is not answering its /metrics", "description": "executor:8003 unreachable"},
         "startsAt": "2024-03-01T10:00:00Z"},
        {"status": "firing", "labels": {"alertname": "AlgoTradingOff"}, "fingerprint": "cd34",
         "annotations": {"summary": "MT5 Algo Trading is off"}, "startsAt": "2024-03-01T10:00:00Z"},
    ]}
    assert (await api.client.post("/api/v1/alerts/alertmanager", json=payload)).status_code == 401
    assert (await api.client.post("/api/v1/alerts/alertmanager", json=payload, headers=alice.headers)).status_code == 401
    assert (await api.client.post("/api/v1/alerts/alertmanager", json=payload, headers={"Authorization": "Bearer wrong"})).status_code == 401
    taken = await api.client.post("/api/v1/alerts/alertmanager", json=payload, headers={"Authorization": "Bearer service-token-for-tests"})
    assert taken.status_code == 200 and taken.json() == {"alerts": 2}
    await notifier.idle()
    for name in ("alice", "bob"):
        assert sorted(receiver.titles(name)) == ["[firing] MT5 Algo Trading is off", "[firing] The executor is not answering its /metrics"]


async def test_a_full_queue_drops_and_counts_instead_of_blocking(api_db):
    notifier = Notifier(api_db, queue_size=1)  # not started: nothing drains it
    from services.decision.alerts import Alert

    notifier.emit(Alert(kind="test", title="a", body="a", key="1"))
    notifier.emit(Alert(kind="test", title="b", body="b", key="2"))
    assert notifier.dropped == 1
