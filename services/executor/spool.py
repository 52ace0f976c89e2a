"""A Bus over two append-only JSON-lines files, for running the executor as its own process without RabbitMQ (the
in-memory bus cannot cross processes): intents and commands are read from an inbox file, events appended to an outbox.

It keeps the bus semantics the executor relies on (shared/bus/base.py): a message is acked only after its handler
returns (the ack is a line number appended to `<inbox>.acked` and fsynced), so a process killed mid-handler gets the
message again when it restarts; a TransientError is retried up to the delivery limit, then dead-lettered; an
InvalidMessage is dead-lettered at once. Dead letters go to the outbox with exchange `dead.letters`. One process only.

Inbox line: {"queue": "executor.1", "type": "OrderIntent", "body": {...}}. Outbox line: {"exchange", "routing_key",
"type", "body"}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

from shared.bus.base import DEATH_REASON_HEADER, Delivery, Handler, QueueSpec
from shared.logging import get_logger
from shared.messages import InvalidMessage, Message, decode

log = get_logger(__name__)


def append_line(path: Path, record: dict) -> None:
    """Append one JSON line and fsync it (it is on disk before the call returns)."""
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def inbox_line(queue: str, message: Message) -> dict:
    return {"queue": queue, "type": message.type_name, "body": json.loads(message.encode())}


class SpoolConsumer:
    def __init__(self, bus: SpoolBus, spec: QueueSpec, handler: Handler) -> None:
        self._bus, self._spec, self._handler = bus, spec, handler
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"spool:{spec.name}")

    async def cancel(self) -> None:
        """Stop taking messages; a handler in progress finishes first (graceful)."""
        self._stopping = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        attempts: dict[int, int] = {}
        while not self._stopping:
            progressed = False
            for number, entry in self._bus.pending(self._spec.name):
                if self._stopping:
                    return
                count = attempts.get(number, 0) + 1
                attempts[number] = count
                try:
                    message, unknown = decode(entry["type"], json.dumps(entry["body"]).encode())
                    delivery = Delivery(message=message, exchange="spool", routing_key=self._spec.name, redelivered=count > 1,
                                        delivery_count=count, unknown_fields=tuple(unknown))
                    await self._handler(message, delivery)
                except InvalidMessage as exc:
                    self._bus.dead_letter(number, entry, f"invalid: {exc}")
                except Exception as exc:  # noqa: BLE001  requeued (retried) until the delivery limit
                    if count >= self._bus.delivery_limit:
                        self._bus.dead_letter(number, entry, f"delivery limit: {exc!r}")
                    else:
                        log.warning("spool: handler failed, retrying", queue=self._spec.name, line=number, error=repr(exc))
                        await asyncio.sleep(self._bus.redelivery_delay_s)
                        break  # in order: the same message again first
                else:
                    self._bus.ack(number)
                progressed = True
            if not progressed:
                await asyncio.sleep(self._bus.poll_s)


class SpoolBus:
    def __init__(self, inbox: Path, outbox: Path, *, delivery_limit: int = 5, poll_s: float = 0.05, redelivery_delay_s: float = 0.2) -> None:
        self.inbox, self.outbox = Path(inbox), Path(outbox)
        self.acked_path = self.inbox.with_name(self.inbox.name + ".acked")
        self.delivery_limit, self.poll_s, self.redelivery_delay_s = delivery_limit, poll_s, redelivery_delay_s
        self._acked: set[int] = set()
        self._consumers: list[SpoolConsumer] = []

    async def start(self) -> None:
        self.inbox.touch(exist_ok=True)
        self.outbox.touch(exist_ok=True)
        if self.acked_path.exists():
            self._acked = {int(x) for x in self.acked_path.read_text().split()}

    async def close(self) -> None:
        for consumer in self._consumers:
            await consumer.cancel()
        self._consumers.clear()

    async def declare_queue(self, spec: QueueSpec) -> None:
        pass

    async def publish(self, message: Message, *, exchange: str, routing_key: str = "", headers: dict[str, str] | None = None) -> None:
        append_line(self.outbox, {"exchange": exchange, "routing_key": routing_key, "type": message.type_name,
                                  "body": json.loads(message.encode()), "headers": headers or {}})

    async def consume(self, spec: QueueSpec, handler: Handler, *, prefetch: int | None = None) -> SpoolConsumer:
        consumer = SpoolConsumer(self, spec, handler)
        self._consumers.append(consumer)
        return consumer

    async def queue_depth(self, name: str) -> int:
        return sum(1 for _ in self.pending(name))

    async def healthy(self) -> bool:
        return self.inbox.exists()

    # --- inside ------------------------------------------------------------------------------------------------

    def pending(self, queue: str):
        """(line number, entry) of the inbox lines for `queue` not acked yet, oldest first."""
        if not self.inbox.exists():
            return []
        out = []
        for number, raw in enumerate(self.inbox.read_text(encoding="utf-8").splitlines()):
            if number in self._acked or not raw.strip():
                continue
            try:
                entry = json.loads(raw)
            except json.JSONDecodeError:
                continue  # a line still being written
            if entry.get("queue") == queue:
                out.append((number, entry))
        return out

    def ack(self, number: int) -> None:
        with self.acked_path.open("a", encoding="utf-8") as f:
            f.write(f"{number}\n")
            f.flush()
            os.fsync(f.fileno())
        self._acked.add(number)

    def dead_letter(self, number: int, entry: dict, reason: str) -> None:
        log.error("spool: dead-lettered", line=number, reason=reason)
        append_line(self.outbox, {"exchange": "dead.letters", "routing_key": entry.get("queue", ""), "type": entry.get("type"),
                                  "body": entry.get("body"), "headers": {DEATH_REASON_HEADER: reason}})
        self.ack(number)
