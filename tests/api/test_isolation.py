"""Each user sees and changes only their own things: another user's id answers 404; no key or a revoked one 401."""

from __future__ import annotations

import pytest
from api_helpers import decide, fill_and_close, new_account, new_bot

from shared.bus import topology


@pytest.fixture
async def alices_world(api, alice):
    """Alice's account, bot, a signal with an open decision, its order and closed position, and a second key."""
    account = await new_account(api, alice)
    bot = await new_bot(api, alice, account["id"])
    signal, intent = await decide(api, bot["id"])
    await fill_and_close(api, intent, ticket=77, pnl=-5.0)
    key = (await api.client.post("/api/v1/keys", headers=alice.headers)).json()
    decisions = (await api.client.get("/api/v1/decisions", headers=alice.headers)).json()["data"]
    return {"account": account["id"], "bot": bot["id"], "signal": str(signal.signal_id), "key": key["id"], "decision": decisions[0]["id"]}


def routes(ids: dict) -> list[tuple[str, str, dict | None]]:
    bot, account = ids["bot"], ids["account"]
    return [
        ("GET", f"/api/v1/bots/{bot}", None),
        ("PATCH", f"/api/v1/bots/{bot}", {"decision_min_score": 0.9}),
        ("DELETE", f"/api/v1/bots/{bot}", None),
        ("POST", f"/api/v1/bots/{bot}/pause", None),
        ("POST", f"/api/v1/bots/{bot}/resume", None),
        ("POST", f"/api/v1/bots/{bot}/kill", None),
        ("GET", f"/api/v1/accounts/{account}", None),
        ("PATCH", f"/api/v1/accounts/{account}", {"is_active": False}),
        ("POST", "/api/v1/bots", {"account_id": account, "symbol": "EURUSD"}),
        ("DELETE", f"/api/v1/keys/{ids['key']}", None),
        ("GET", f"/api/v1/signals/{ids['signal']}", None),
        *[("GET", f"/api/v1/{name}?bot_id={bot}", None) for name in ("signals", "decisions", "orders", "positions", "audit", "stats")],
    ]


async def test_another_users_ids_answer_404_and_change_nothing(api, alice, bob, alices_world):
    before = {
        name: (await api.client.get(f"/api/v1/{name}", headers=alice.headers)).json()
        for name in ("bots", "accounts", "signals", "decisions", "orders", "positions", "keys")
    }
    commands = len(api.bus.sent(topology.EXECUTION_COMMANDS))
    for method, path, body in routes(alices_world):
        answer = await api.client.request(method, path, json=body, headers=bob.headers)
        expected = 422 if path == "/api/v1/bots" else 404  # an account id in a body is a field to correct
        assert answer.status_code == expected, (method, path, answer.text)
        assert "alice" not in answer.text
    after = {
        name: (await api.client.get(f"/api/v1/{name}", headers=alice.headers)).json()
        for name in ("bots", "accounts", "signals", "decisions", "orders", "positions", "keys")
    }
    assert after == before
    assert len(api.bus.sent(topology.EXECUTION_COMMANDS)) == commands


async def test_another_users_lists_are_empty_of_alices_rows(api, alice, bob, alices_world):
    for name in ("bots", "accounts", "signals", "decisions", "orders", "positions"):
        answer = await api.client.get(f"/api/v1/{name}", headers=bob.headers)
        assert answer.json() == {"data": [], "count": 0, "next_cursor": None}, name
    audit = (await api.client.get("/api/v1/audit", headers=bob.headers)).json()["data"]
    assert audit and all(row["user_id"] == bob.id for row in audit)  # only bob's own creation and key
    stats = (await api.client.get("/api/v1/stats", headers=bob.headers)).json()
    assert stats["total"]["trades"] == 0
    kill = (await api.client.post("/api/v1/kill", headers=bob.headers)).json()
    assert kill == {"killed": [], "failed": [], "commands": 0}
    assert (await api.client.get(f"/api/v1/bots/{alices_world['bot']}", headers=alice.headers)).json()["status"] == "active"


ALL_ROUTES = [
    ("GET", "/api/v1/me"), ("GET", "/api/v1/keys"), ("POST", "/api/v1/keys"), ("DELETE", "/api/v1/keys/1"),
    ("GET", "/api/v1/accounts"), ("POST", "/api/v1/accounts"), ("GET", "/api/v1/accounts/1"), ("PATCH", "/api/v1/accounts/1"),
    ("GET", "/api/v1/bots"), ("POST", "/api/v1/bots"), ("GET", "/api/v1/bots/1"), ("PATCH", "/api/v1/bots/1"),
    ("DELETE", "/api/v1/bots/1"), ("POST", "/api/v1/bots/1/pause"), ("POST", "/api/v1/bots/1/resume"), ("POST", "/api/v1/bots/1/kill"),
    ("POST", "/api/v1/kill"), ("GET", "/api/v1/signals"), ("GET", "/api/v1/signals/x"), ("GET", "/api/v1/decisions"),
    ("GET", "/api/v1/orders"), ("GET", "/api/v1/positions"), ("GET", "/api/v1/audit"), ("GET", "/api/v1/stats"),
    ("POST", "/api/v1/positions/1/close"), ("GET", "/api/v1/notifications"), ("POST", "/api/v1/notifications"),
    ("DELETE", "/api/v1/notifications/1"), ("POST", "/api/v1/notifications/1/test"),
    ("POST", "/api/v1/alerts/alertmanager"),  # the service token's, which no user key is
]


async def test_every_route_is_listed_here(api):
    served = {(m.upper(), path) for path, ops in api.app.openapi()["paths"].items() for m in ops}
    assert len(served) == len(ALL_ROUTES), sorted(served)


@pytest.mark.parametrize(("method", "path"), ALL_ROUTES)
async def test_no_key_a_wrong_key_or_a_revoked_key_answer_401(api, alice, alices_world, method, path):
    revoked = (await api.client.post("/api/v1/keys", headers=alice.headers)).json()
    await api.client.delete(f"/api/v1/keys/{revoked['id']}", headers=alice.headers)
    path = path.replace("/1", f"/{alices_world['bot']}")
    for headers in ({}, {"X-API-Key": "not-a-key"}, {"X-API-Key": revoked["api_key"]}):
        answer = await api.client.request(method, path, json={}, headers=headers)
        assert answer.status_code == 401, (method, path, headers, answer.text)
    assert (await api.client.get(f"/api/v1/bots/{alices_world['bot']}", headers=alice.headers)).json()["status"] == "active"
