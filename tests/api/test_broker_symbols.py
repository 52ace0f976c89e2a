"""A symbol the shipped specs lack, on an mt5 account: the account's terminal describes it over the rates RPC (and the
bot trades it with the broker's spec), or its reason is the 422 (architecture.md: specs come from the broker)."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from services.decision.app import mount
from services.decision.service import DecisionService
from shared.bus.memory import InMemoryBus
from shared.messages import RatesReply, RatesRequest
from shared.rates import RATES, executor_rates_queue
from shared.symbols import SymbolSpec, UnknownSymbol, get_spec
from shared.timeutil import ManualClock
from tests.api.conftest import add_person
from tests.decision.decision_helpers import T0, make_settings

SILVER = SymbolSpec(name="XAGUSD", digits=3, point=0.001, pip_size=0.01, contract_size=5000, volume_min=0.01,
                    volume_step=0.01, volume_max=50, stops_level=10, round_number_step=0.5)


@pytest.fixture
async def stack(sessions):
    bus = InMemoryBus(delivery_limit=3, redelivery_delay_s=0.001)
    await bus.start()
    service = DecisionService(bus=bus, sessions=sessions, clock=ManualClock(T0), settings=make_settings(http_timeout_s=2.0),
                              lookback_for=lambda configs: 100)
    app = FastAPI()
    mount(app, service)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        yield bus, client, service
    await service.stop()
    await bus.close()


async def _terminal(bus, account_id: int, knows: set[str]) -> list[str]:
    """A fake executor's rates consumer: describes the symbols it knows, and says why not for the others."""
    asked: list[str] = []

    async def answer(message, delivery) -> None:
        assert isinstance(message, RatesRequest)
        asked.append(message.symbol)
        known = message.symbol.removesuffix("m") in knows
        reply = RatesReply(correlation_id=message.correlation_id, account_id=account_id, symbol=message.symbol,
                           bars=None, spec=SILVER if known else None,
                           error="" if known else f"the broker has no symbol for {message.symbol!r} (looked for *XPTUSD*)")
        if known:
            from shared.bars import Bars
            from shared.messages import BarColumns

            reply = reply.model_copy(update={"bars": BarColumns.from_bars(Bars.from_columns(
                time=[0], open=[25.0], high=[25.1], low=[24.9], close=[25.0], tick_volume=[1], spread=[10]))})
        await bus.publish(reply, exchange=RATES, routing_key=message.reply_to)

    await bus.consume(executor_rates_queue(account_id), answer)
    return asked


async def test_the_terminal_describes_a_symbol_the_shipped_table_lacks_or_the_bot_is_refused_with_its_reason(stack, sessions):
    bus, client, _ = stack
    alice = await add_person(sessions, "alice")
    account = (await client.post("/api/v1/accounts", headers=alice.headers, json={
        "name": "mt5", "broker": "mt5", "login": "5000001", "server": "Sim-Demo", "password": "env:SIM_PASSWORD",
        "symbol_suffix": "m"})).json()
    asked = await _terminal(bus, account["id"], knows={"XAGUSD"})
    with pytest.raises(UnknownSymbol):
        get_spec("XAGUSDm", "m")

    made = await client.post("/api/v1/bots", headers=alice.headers, json={"account_id": account["id"], "symbol": "XAGUSDm"})
    assert made.status_code == 201, made.text
    assert get_spec("XAGUSDm", "m") == SILVER  # learnt from the terminal's answer: it sizes the bot's orders

    refused = await client.post("/api/v1/bots", headers=alice.headers, json={"account_id": account["id"], "symbol": "XPTUSDm"})
    assert refused.status_code == 422
    assert "the broker has no symbol for 'XPTUSDm'" in refused.text
    assert asked == ["XAGUSDm", "XPTUSDm"]

    shipped = await client.post("/api/v1/bots", headers=alice.headers, json={"account_id": account["id"], "symbol": "XAUUSDm"})
    assert shipped.status_code == 201 and asked == ["XAGUSDm", "XPTUSDm"]  # a shipped spec needs no question
