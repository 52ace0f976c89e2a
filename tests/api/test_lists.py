"""Lists: the list shape, filters, and an opaque cursor that pages through every row once, newest first; GET /stats."""

from __future__ import annotations

from datetime import timedelta

from api_helpers import decide, fill_and_close, new_account, new_bot

from tests.decision.decision_helpers import T0


async def page_all(api, person, path: str, limit: int) -> list[dict]:
    rows, cursor, pages = [], None, 0
    while True:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        answer = (await api.client.get(path, params=params, headers=person.headers)).json()
        assert set(answer) == {"data", "count", "next_cursor"} and answer["count"] == len(answer["data"]) <= limit
        rows += answer["data"]
        pages += 1
        cursor = answer["next_cursor"]
        if cursor is None:
            return rows
        assert pages < 50


async def test_cursor_pages_through_every_row_once_in_order(api, alice):
    account = await new_account(api, alice)
    bot = await new_bot(api, alice, account["id"], decision_min_score=0.99)  # every signal ignored: no limits in the way
    for minute in range(7):
        api.clock.advance(timedelta(seconds=1))
        await decide(api, bot["id"], bar_time=T0 + timedelta(minutes=minute), strategy="price_action_pinbar")
    everything = (await api.client.get("/api/v1/signals?limit=500", headers=alice.headers)).json()["data"]
    assert len(everything) == 7
    assert [s["bar_time"] for s in everything] == sorted((s["bar_time"] for s in everything), reverse=True)
    for limit in (1, 2, 3, 7):
        assert await page_all(api, alice, "/api/v1/signals", limit) == everything
    decisions = await page_all(api, alice, "/api/v1/decisions", 3)
    assert [d["id"] for d in decisions] == sorted((d["id"] for d in decisions), reverse=True) and len(decisions) == 7
    assert all(d["action"] == "ignore" and d["reason"] == "score_below_min" and d["checks"] for d in decisions)
    audit = await page_all(api, alice, "/api/v1/audit", 4)
    assert len({row["id"] for row in audit}) == len(audit) and sum(row["kind"] == "signal" for row in audit) == 7


async def test_filters(api, alice):
    account = await new_account(api, alice)
    gold = await new_bot(api, alice, account["id"])
    euro = await new_bot(api, alice, account["id"], symbol="EURUSD")
    await decide(api, gold["id"], bar_time=T0)
    api.clock.advance(timedelta(minutes=10))
    await decide(api, euro["id"], bar_time=T0, entry=1.1, stop=1.099, target=1.102)
    get = lambda q: api.client.get(f"/api/v1/signals?{q}", headers=alice.headers)  # noqa: E731
    assert [s["bot_id"] for s in (await get(f"bot_id={gold['id']}")).json()["data"]] == [gold["id"]]
    assert [s["symbol"] for s in (await get("symbol=EURUSD")).json()["data"]] == ["EURUSD"]
    assert (await get("strategy=trend_pullback")).json()["count"] == 0
    since = (T0 + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    assert [s["bot_id"] for s in (await get(f"since={since}")).json()["data"]] == [euro["id"]]
    bad = await get("cursor=not-a-cursor")
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "cursor"]
    typo = await get(f"bot={gold['id']}")  # a misspelt filter must not answer everything
    assert typo.status_code == 422 and "unknown query parameter 'bot'" in typo.json()["detail"][0]["msg"]
    twice = await get("symbol=EURUSD&symbol=XAUUSDm")
    assert twice.status_code == 422 and twice.json()["detail"][0]["msg"] == "give symbol once"


async def test_orders_positions_and_stats_come_from_the_read_model(api, alice):
    account = await new_account(api, alice)
    bot = await new_bot(api, alice, account["id"], risk_max_per_symbol=5, risk_max_concurrent_positions=5)
    _, won = await decide(api, bot["id"], bar_time=T0)
    await fill_and_close(api, won, ticket=11, pnl=30.0, close_price=2003.0)
    _, lost = await decide(api, bot["id"], bar_time=T0 + timedelta(minutes=1))
    await fill_and_close(api, lost, ticket=12, pnl=-10.0, close_price=1999.0)
    _, still_open = await decide(api, bot["id"], bar_time=T0 + timedelta(minutes=2))
    orders = (await api.client.get("/api/v1/orders", headers=alice.headers)).json()["data"]
    assert [(o["client_order_id"], o["status"]) for o in orders] == [
        (still_open.client_order_id, "sent"), (lost.client_order_id, "filled"), (won.client_order_id, "filled")
    ]
    positions = (await api.client.get("/api/v1/positions", headers=alice.headers)).json()["data"]
    assert [(p["ticket"], p["status"], p["pnl"]) for p in positions] == [(12, "closed", -10.0), (11, "closed", 30.0)]
    stats = (await api.client.get(f"/api/v1/stats?bot_id={bot['id']}", headers=alice.headers)).json()
    total = stats["total"]
    assert (total["trades"], total["wins"], total["win_rate"], total["profit_factor"], total["net_pnl"]) == (2, 1, 0.5, 3.0, 20.0)
    assert total["max_drawdown"] == 10.0
    assert set(stats["by_strategy"]) == {"price_action_pinbar"}
