"""The rates RPC (architecture.md, "Bus topology": exchange `rates`): market data asks the executor that holds an
account's MT5 session for closed M1 bars, converted to UTC. Request/reply over the plain Bus interface:

- the executor consumes `executor.<account_id>.rates`, bound to `rates` with key str(account_id);
- each client owns one exclusive reply queue bound to `rates` with key `reply.<uuid>` and names it in `reply_to`;
  replies carry the request's `correlation_id`, so one client can have several requests in flight.

This needs nothing beyond what every back end has (exclusive queues, direct exchanges), so it runs on the in-memory
bus and on RabbitBus alike. (AMQP's own `reply_to` property and the direct reply-to pseudo-queue would save the
binding, but the Bus interface does not expose message properties; routing keys do the same job here.)
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from datetime import datetime

from shared.bars import Bars
from shared.bus.base import Bus, Consumer, Delivery, QueueSpec, Unroutable
from shared.logging import get_logger
from shared.symbols import learn_spec
from shared.messages import Message, RatesReply, RatesRequest

log = get_logger(__name__)

RATES = "rates"
REPLY_PREFIX = "reply."


def executor_rates_queue(account_id: int) -> QueueSpec:
    return QueueSpec(f"executor.{account_id}.rates", bindings=((RATES, str(account_id)),), single_active_consumer=True,
                     delivery_limit=1)


class RatesUnavailable(Exception):
    """No executor answered (none serves the account, it timed out) or it answered with an error."""


class RatesClient:
    """Ask for closed M1 bars over the bus: `await client.fetch(account_id=1, symbol="XAUUSD", count=100)`.

    `on_terminal_time` (e.g. a TerminalClock's `observe`) is called with a reply's `server_time`, the terminal's
    time in UTC when it answered, whenever an awaited reply carries one.
    """

    def __init__(self, bus: Bus, *, timeout_s: float = 10.0, on_terminal_time: Callable[[datetime], object] | None = None) -> None:
        self._bus = bus
        self._timeout_s = timeout_s
        self._on_terminal_time = on_terminal_time
        self._key = f"{REPLY_PREFIX}{uuid.uuid4().hex}"
        self._waiting: dict[uuid.UUID, asyncio.Future[RatesReply]] = {}
        self._consumer: Consumer | None = None

    async def start(self) -> None:
        if self._consumer is None:
            spec = QueueSpec(f"rates.{self._key}", bindings=((RATES, self._key),), exclusive=True)
            self._consumer = await self._bus.consume(spec, self._on_reply)

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.cancel()
            self._consumer = None
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()

    async def _on_reply(self, message: Message, delivery: Delivery) -> None:
        if not isinstance(message, RatesReply):
            return
        future = self._waiting.pop(message.correlation_id, None)
        if future is None or future.done():
            return  # a reply nobody waits for (timed out) is dropped, its server time too (it is old news)
        if message.server_time is not None and self._on_terminal_time is not None:
            try:
                self._on_terminal_time(message.server_time)
            except Exception as exc:  # noqa: BLE001  a clock that cannot follow must not lose the bars
                log.warning("terminal time not taken", server_time=message.server_time.isoformat(), error=repr(exc))
        future.set_result(message)

    async def fetch(self, *, account_id: int, symbol: str, count: int, timeframe: str = "1m") -> Bars:
        await self.start()
        correlation_id = uuid.uuid4()
        future: asyncio.Future[RatesReply] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = future
        request = RatesRequest(account_id=account_id, symbol=symbol, timeframe=timeframe, count=count, reply_to=self._key,
                               correlation_id=correlation_id)
        try:
            try:
                await self._bus.publish(request, exchange=RATES, routing_key=str(account_id))
            except Unroutable as exc:
                raise RatesUnavailable(f"no executor serves rates for account {account_id}") from exc
            try:
                async with asyncio.timeout(self._timeout_s):
                    reply = await future
            except TimeoutError as exc:
                raise RatesUnavailable(f"no rates answer for {symbol} on account {account_id} within {self._timeout_s}s") from exc
        finally:
            self._waiting.pop(correlation_id, None)
        if reply.spec is not None:
            learn_spec(reply.spec)  # the broker's own spec: this process's strategies and windows use it
        if reply.error or reply.bars is None:
            raise RatesUnavailable(reply.error or "empty answer")
        return reply.bars.to_bars()


async def fetch_rates(bus: Bus, *, account_id: int, symbol: str, count: int, timeout_s: float = 10.0) -> Bars:
    """One request with a throw-away client (a feed that asks often should keep one RatesClient)."""
    client = RatesClient(bus, timeout_s=timeout_s)
    try:
        return await client.fetch(account_id=account_id, symbol=symbol, count=count)
    finally:
        with contextlib.suppress(Exception):
            await client.close()
