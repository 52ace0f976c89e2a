"""The kill switch end to end: losses past the limit -> killed, close_all sent, the reason recorded; only a person's
resume clears it; POST /kill flattens and stops every bot of the user."""

from __future__ import annotations

from datetime import timedelta

from api_helpers import decide, fill_and_close, new_account, new_bot, snapshot
from prometheus_client import REGISTRY

from shared.bus import topology
from shared.messages import ExecutorCommand, PositionEvent
from tests.decision.decision_helpers import T0


def commands(api) -> list[tuple[str, ExecutorCommand]]:
    return api.bus.sent(topology.EXECUTION_COMMANDS)


def trips() -> float:
    return REGISTRY.get_sample_value("kill_switch_trips_total") or 0.0


async def test_losses_past_the_limit_kill_the_bot_and_flatten_it(api, alice):
    account = await new_account(api, alice)
    bot = await new_bot(api, alice, account["id"], risk_max_per_symbol=5, risk_max_concurrent_positions=5)
    await api.service.handle_account_snapshot(snapshot(account["id"], balance=10_000.0, at=T0 - timedelta(hours=1)))

    _, first = await decide(api, bot["id"], bar_time=T0)
    await fill_and_close(api, first, ticket=1, pnl=-150.0)  # 1.5 %: within the limit
    assert (await api.client.get(f"/api/v1/bots/{bot['id']}", headers=alice.headers)).json()["status"] == "active"
    assert commands(api) == []

    _, second = await decide(api, bot["id"], bar_time=T0 + timedelta(minutes=1))
    await fill_and_close(api, second, ticket=2, pnl=None)  # open, and losing 60 on the account's equity
    api.clock.advance(timedelta(minutes=5))
    tripped_before = trips()
    await api.service.handle_account_snapshot(snapshot(account["id"], balance=9_850.0, equity=9_790.0, at=T0 + timedelta(minutes=5)))

    shown = (await api.client.get(f"/api/v1/bots/{bot['id']}", headers=alice.headers)).json()
    assert shown["status"] == "killed"
    assert "2.10% of the day-start balance 10000.00" in shown["status_reason"]
    [(key, command)] = commands(api)
    assert key == str(account["id"])
    assert (command.command, command.bot_id, command.reason) == ("close_all", bot["id"], "kill_switch")
    assert trips() == tripped_before + 1
    assert api.service.last_plan.symbols == ()
    audit = (await api.client.get(f"/api/v1/audit?bot_id={bot['id']}&kind=bot", headers=alice.headers)).json()["data"]
    assert audit[0]["after"]["status"] == "killed" and audit[0]["actor"] == "decision"

    # A killed bot's signals are decided ignore.
    sig, intent = await decide(api, bot["id"], bar_time=T0 + timedelta(minutes=6))
    assert intent is None
    decision = (await api.client.get(f"/api/v1/signals/{sig.signal_id}", headers=alice.headers)).json()
    assert (decision["action"], decision["reason"]) == ("ignore", "bot_not_active")
    # While the read model still shows its position open, each snapshot sends close_all again (never a second kill) ...
    await api.service.handle_account_snapshot(snapshot(account["id"], balance=9_850.0, equity=9_790.0, at=T0 + timedelta(minutes=7)))
    assert [(c.command, c.bot_id) for _, c in commands(api)] == [("close_all", bot["id"])] * 2
    assert trips() == tripped_before + 1
    # ... and once the executor reports it closed, nothing more is sent.
    await api.service.handle_position_event(
        PositionEvent(ticket=2, account_id=account["id"], bot_id=bot["id"], client_order_id=second.client_order_id, symbol=second.symbol,
                      side=second.side, volume=second.volume, kind="closed", open_price=2000.0, close_price=1994.0, pnl=-60.0,
                      close_reason="kill_switch", at=T0 + timedelta(minutes=8))
    )
    await api.service.handle_account_snapshot(snapshot(account["id"], balance=9_790.0, at=T0 + timedelta(minutes=9)))
    assert len(commands(api)) == 2

    # Only a person's resume clears it; the executor's block is lifted; the loss so far no longer counts.
    resumed = (await api.client.post(f"/api/v1/bots/{bot['id']}/resume", headers=alice.headers)).json()
    assert (resumed["status"], resumed["status_reason"]) == ("active", "")
    assert commands(api)[-1][1].command == "resume_bot"
    api.clock.advance(timedelta(minutes=5))
    await api.service.handle_account_snapshot(snapshot(account["id"], balance=9_790.0, at=T0 + timedelta(minutes=12)))
    assert (await api.client.get(f"/api/v1/bots/{bot['id']}", headers=alice.headers)).json()["status"] == "active"
    assert len(api.service.last_plan.symbols) == 1


async def test_a_switched_off_kill_switch_never_trips(api, alice):
    account = await new_account(api, alice)
    bot = await new_bot(api, alice, account["id"], kill_switch_enabled=False)
    await api.service.handle_account_snapshot(snapshot(account["id"], balance=10_000.0))
    _, intent = await decide(api, bot["id"])
    await fill_and_close(api, intent, ticket=1, pnl=-900.0)
    assert (await api.client.get(f"/api/v1/bots/{bot['id']}", headers=alice.headers)).json()["status"] == "active"
    assert commands(api) == []


async def test_the_day_start_balance_comes_from_the_broker_day(api, alice):
    """A loss from yesterday's broker day does not count today."""
    account = await new_account(api, alice)
    bot = await new_bot(api, alice, account["id"])
    await api.service.handle_account_snapshot(snapshot(account["id"], balance=10_000.0, at=T0))
    _, intent = await decide(api, bot["id"])
    await fill_and_close(api, intent, ticket=1, pnl=-190.0)
    api.clock.advance(timedelta(days=1))
    await api.service.handle_account_snapshot(snapshot(account["id"], balance=9_810.0, at=T0 + timedelta(days=1)))
    assert (await api.client.get(f"/api/v1/bots/{bot['id']}", headers=alice.headers)).json()["status"] == "active"


async def test_kill_one_bot_and_kill_all(api, alice):
    account = await new_account(api, alice)
    gold = await new_bot(api, alice, account["id"])
    euro = await new_bot(api, alice, account["id"], symbol="EURUSD")
    killed = (await api.client.post(f"/api/v1/bots/{gold['id']}/kill", headers=alice.headers)).json()
    assert killed["status"] == "killed" and commands(api)[-1][1].bot_id == gold["id"]
    assert (await api.client.post(f"/api/v1/bots/{gold['id']}/pause", headers=alice.headers)).json()["status"] == "killed"
    answer = (await api.client.post("/api/v1/kill", headers=alice.headers)).json()
    assert answer == {"killed": [gold["id"], euro["id"]], "failed": [], "commands": 2}
    assert {(c.command, c.bot_id) for _, c in commands(api)[-2:]} == {("close_all", gold["id"]), ("close_all", euro["id"])}
    listed = (await api.client.get("/api/v1/bots", headers=alice.headers)).json()["data"]
    assert {b["status"] for b in listed} == {"killed"}
    assert api.service.last_plan.symbols == ()
