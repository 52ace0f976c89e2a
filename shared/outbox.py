"""The transactional outbox (architecture.md, "Idempotency chain" 6): a message a transaction decides to send is
written to the `outbox` table in that same transaction, and published after the commit by a relay.

`enqueue` is the one INSERT a transaction adds. After the commit the caller kicks the `OutboxRelay` with the rows it
wrote: the relay publishes them at once (no polling delay), awaits the bus's confirm and marks them published in one
UPDATE per batch. A publish that fails keeps its row (attempts and last_error recorded on it) and is retried in the
background with a bounded back-off until the broker confirms; an `Unroutable` to an executor exchange declares that
account's executor queues first, so the message waits there for an executor that has not started yet. At start-up,
and in a slow sweep, the relay publishes whatever rows no live relay holds (a crashed process's); on PostgreSQL the
sweep locks the rows it takes (FOR UPDATE SKIP LOCKED), so two relays sweeping at once do not both publish a row.

Messages keep their message ids, and every consumer drops repeats: a row published twice (a crash between the
confirm and the UPDATE, a sweep racing the row's owner) is harmless, only wasteful.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from prometheus_client import Counter, Gauge
from sqlalchemy import Integer, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.bus import topology
from shared.bus.base import Bus, Outgoing, QueueSpec, Unroutable
from shared.db import unnest
from shared.db.engine import transaction
from shared.db.models import OutboxRow
from shared.logging import get_logger
from shared.messages import InvalidMessage, Message, decode
from shared.timeutil import utcnow

log = get_logger(__name__)

OUTBOX = OutboxRow.__table__
ERROR_CHARS = 500  # last_error's column width

outbox_published_total = Counter("outbox_published_total", "Outbox messages the bus confirmed", ["exchange"])
outbox_publish_failures_total = Counter(
    "outbox_publish_failures_total", "Outbox publishes that failed (each is retried until the bus confirms)", ["exchange", "error"]
)
outbox_unpublished = Gauge("outbox_unpublished", "Outbox rows this process holds that the bus has not confirmed yet")
outbox_queues_declared_total = Counter(
    "outbox_executor_queues_declared_total", "Executor queues the relay declared for an account whose executor had not (Unroutable)"
)

Destination = tuple[str, str]  # (exchange, routing key)


@dataclass(frozen=True, slots=True)
class Pending:
    """An outbox row and its message, as the transaction that wrote it knows them (no read back to publish it)."""

    id: int
    exchange: str
    routing_key: str
    message: Message

    @property
    def destination(self) -> Destination:
        return (self.exchange, self.routing_key)


# --- plain functions over a session ----------------------------------------------------------------------------

_INSERT = OUTBOX.insert().returning(OUTBOX.c.id)
# The rows by id: an IN list (SQLite), or `= ANY` of one array (PostgreSQL: one statement text whatever the count).
_IDS = {"sqlite": OUTBOX.c.id.in_(bindparam("ids", expanding=True)),
        "postgresql": OUTBOX.c.id == any_(bindparam("ids", type_=ARRAY(Integer)))}
_MARK_PUBLISHED = {dialect: OUTBOX.update().where(ids).values(published_at=bindparam("at")) for dialect, ids in _IDS.items()}
_RECORD_FAILURE = {
    dialect: OUTBOX.update().where(ids).values(attempts=OUTBOX.c.attempts + 1, last_error=bindparam("error"))
    for dialect, ids in _IDS.items()
}


async def enqueue(*, session: AsyncSession, message: Message, exchange: str, routing_key: str, now: datetime | None = None) -> Pending:
    """Write `message` to the outbox in the session's transaction (one INSERT); kick the relay with the result once
    the transaction has committed."""
    values = {
        "exchange": exchange,
        "routing_key": routing_key,
        "message_type": message.type_name,
        "body": message.model_dump_json(),  # the bytes the bus carries (Message.encode), as text
        "created_at": now or utcnow(),
        "published_at": None,
        "attempts": 0,
        "last_error": None,
    }
    row_id = (await (await session.connection()).execute(_INSERT, values)).scalar_one()
    return Pending(id=row_id, exchange=exchange, routing_key=routing_key, message=message)


_INSERT_MANY = OUTBOX.insert().returning(OUTBOX.c.id, sort_by_parameter_order=True)
# PostgreSQL: the same rows over one array per column (shared/db/unnest.py), ids drawn in the order given.
_INSERT_ARRAYS = unnest.insert("outbox", (
    ("exchange", "text"), ("routing_key", "text"), ("message_type", "text"), ("body", "text"), ("created_at", "time"),
    ("published_at", "time"), ("attempts", "int"), ("last_error", "text"),
), returning=("id",))


async def enqueue_many(
    *, session: AsyncSession, items: Sequence[tuple[Message, str, str]], now: datetime | None = None
) -> list[Pending]:
    """Write several messages, each `(message, exchange, routing_key)`, to the outbox in one multi-row INSERT (ids in
    the order given); kick the relay with them together once the transaction has committed."""
    if not items:
        return []
    at = now or utcnow()
    values = [
        {"exchange": exchange, "routing_key": routing_key, "message_type": message.type_name, "body": message.model_dump_json(),
         "created_at": at, "published_at": None, "attempts": 0, "last_error": None}
        for message, exchange, routing_key in items
    ]
    connection = await session.connection()
    if connection.dialect.name == "postgresql":
        ids = sorted((await _INSERT_ARRAYS.execute(connection, values)).scalars().all())
    else:
        ids = (await connection.execute(_INSERT_MANY, values)).scalars().all()
    return [Pending(id=row_id, exchange=exchange, routing_key=routing_key, message=message)
            for row_id, (message, exchange, routing_key) in zip(ids, items, strict=True)]


async def mark_published(*, session: AsyncSession, ids: Sequence[int], at: datetime) -> None:
    if ids:
        connection = await session.connection()
        await connection.execute(_MARK_PUBLISHED[connection.dialect.name], {"ids": list(ids), "at": at})


async def record_failure(*, session: AsyncSession, ids: Sequence[int], error: str) -> None:
    if ids:
        connection = await session.connection()
        await connection.execute(_RECORD_FAILURE[connection.dialect.name], {"ids": list(ids), "error": error[:ERROR_CHARS]})


async def unpublished(*, session: AsyncSession, limit: int, older_than: datetime | None = None, exclude: Sequence[int] = ()) -> list:
    """Rows not yet published, oldest first, locked on PostgreSQL (SKIP LOCKED: rows another relay holds are passed
    over; SQLite has no row locks and renders no FOR UPDATE)."""
    stmt = select(OUTBOX).where(OUTBOX.c.published_at.is_(None))
    if older_than is not None:
        stmt = stmt.where(OUTBOX.c.created_at <= older_than)
    if exclude:
        stmt = stmt.where(OUTBOX.c.id.not_in(list(exclude)))
    stmt = stmt.order_by(OUTBOX.c.id).limit(limit).with_for_update(skip_locked=True)
    return list((await (await session.connection()).execute(stmt)).all())


async def prune(*, session: AsyncSession, published_before: datetime, limit: int = 1000) -> int:
    """Delete up to `limit` rows published before `published_before` (the outbox is not an archive)."""
    doomed = (
        select(OUTBOX.c.id)
        .where(OUTBOX.c.published_at.is_not(None), OUTBOX.c.published_at < published_before)
        .order_by(OUTBOX.c.id)
        .limit(limit)
        .scalar_subquery()
    )
    result = await (await session.connection()).execute(OUTBOX.delete().where(OUTBOX.c.id.in_(doomed)))
    return result.rowcount or 0


def executor_queues_for(destination: Destination) -> tuple[QueueSpec, ...]:
    """The executor queues a message to `destination` needs (its account's orders and commands queues), or ()."""
    exchange, routing_key = destination
    if exchange in (topology.EXECUTION_ORDERS, topology.EXECUTION_COMMANDS) and routing_key.isdigit():
        account_id = int(routing_key)
        return (topology.executor_orders_queue(account_id), topology.executor_commands_queue(account_id))
    return ()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]


# --- the relay -------------------------------------------------------------------------------------------------


class OutboxRelay:
    """Publishes outbox rows after their commit, in id order per destination, and retries until the bus confirms.

    `kick(rows)` is called after each commit with the rows that transaction wrote; it never raises. Rows to one
    destination (an account's executor) go out in id order, and a later row waits while an earlier one to the same
    destination is failing (a resume_bot must not overtake the close_all before it); other destinations go on.
    """

    def __init__(
        self,
        *,
        bus: Bus,
        sessions: async_sessionmaker[AsyncSession],
        retry_min_s: float = 0.05,
        retry_max_s: float = 5.0,
        sweep_interval_s: float = 15.0,
        sweep_min_age_s: float = 30.0,
        retain_s: float = 86_400.0,
        prune_interval_s: float = 600.0,
        batch_size: int = 500,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._bus = bus
        self._sessions = sessions
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.sweep_interval_s = sweep_interval_s
        self.sweep_min_age_s = sweep_min_age_s
        self.retain_s = retain_s
        self.prune_interval_s = prune_interval_s
        self.batch_size = batch_size
        self._now = now
        self._pending: dict[int, Pending] = {}  # committed, not confirmed yet
        self._unmarked: dict[int, None] = {}  # confirmed, published_at not written yet
        self._failed: list[tuple[list[int], str]] = []  # attempts to record: (row ids, error)
        self._retry_at: dict[Destination, float] = {}  # a failing destination's next try (monotonic)
        self._failures: dict[Destination, int] = {}  # its consecutive failures (the back-off's exponent)
        self._poisoned: set[int] = set()  # rows whose body does not decode: reported, never published
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._started = False
        self._next_sweep = 0.0
        self._next_prune = 0.0

    @property
    def unpublished(self) -> int:
        """Rows this relay holds that the bus has not confirmed (waiting for a retry)."""
        return len(self._pending)

    async def start(self) -> None:
        """Publish what a crashed process left, then retry and sweep in the background until `stop`."""
        self._started = True
        await self.sweep(min_age_s=0.0)
        self._next_sweep = time.monotonic() + self.sweep_interval_s
        self._next_prune = time.monotonic() + self.prune_interval_s
        self._ensure_task()

    async def stop(self) -> None:
        """Stop the background task; write the published marks still owed (what stays unpublished is kept for the
        next start)."""
        self._started = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            async with self._lock:
                await self._write_marks()
        except Exception as exc:  # noqa: BLE001  unmarked rows are published again at the next start (same ids)
            log.warning("outbox: published marks not written at stop; those rows go out again at the next start",
                        error=repr(exc))

    async def kick(self, rows: Sequence[Pending] = ()) -> bool:
        """Publish `rows` (their transaction has committed) and whatever else this relay holds that is due.

        Never raises: what fails is kept and retried in the background. True when nothing is left waiting.
        """
        for row in rows:
            self._pending[row.id] = row
        if self._pending or self._unmarked:
            try:
                await self._drain()
            except Exception as exc:  # noqa: BLE001  the rows are kept; the background task retries
                log.error("outbox relay failed; retrying in the background", error=repr(exc))
                for destination in {row.destination for row in self._pending.values()}:
                    count = self._failures.get(destination, 0) + 1
                    self._failures[destination] = count
                    self._retry_at[destination] = time.monotonic() + min(self.retry_max_s, self.retry_min_s * 2 ** (count - 1))
                self._ensure_task()
        outbox_unpublished.set(len(self._pending))
        return not self._pending

    # --- publishing ---------------------------------------------------------------------------------------------

    async def _drain(self) -> None:
        async with self._lock:
            while True:
                groups = self._due()
                if not groups:
                    break
                for destination, rows, error in await self._publish_groups(groups):
                    if error is None:
                        for row in rows:
                            del self._pending[row.id]
                            self._unmarked[row.id] = None
                        self._failures.pop(destination, None)
                        self._retry_at.pop(destination, None)
                    else:
                        self._note_failure(destination, rows, error)
            await self._write_marks()
        if self._pending or self._unmarked:
            self._ensure_task()

    def _due(self) -> dict[Destination, list[Pending]]:
        """Rows to publish now, by destination, in id order; a destination in back-off is left for later."""
        now = time.monotonic()
        groups: dict[Destination, list[Pending]] = {}
        rows = self._pending.values() if len(self._pending) == 1 else sorted(self._pending.values(), key=lambda r: r.id)
        for row in rows:
            destination = row.destination
            if self._retry_at.get(destination, 0.0) > now:
                continue
            group = groups.setdefault(destination, [])
            if len(group) < self.batch_size:
                group.append(row)
        return groups

    async def _publish_groups(self, groups: dict[Destination, list[Pending]]) -> list[tuple[Destination, list[Pending], BaseException | None]]:
        """Publish each destination's rows in order (its confirms awaited together); destinations side by side."""
        if len(groups) == 1:  # the signal path: one intent, no gather
            [(destination, rows)] = groups.items()
            return [(destination, rows, await self._publish_group(destination, rows))]
        items = list(groups.items())
        errors = await asyncio.gather(*(self._publish_group(d, rows) for d, rows in items))
        return [(d, rows, error) for (d, rows), error in zip(items, errors, strict=True)]

    async def _publish_group(self, destination: Destination, rows: list[Pending]) -> BaseException | None:
        """None once the bus confirmed every row of the group, else the failure (the whole group is then retried:
        some may have been delivered, and their consumers drop the repeats)."""
        try:
            try:
                await self._send(destination, rows)
            except Unroutable:
                specs = executor_queues_for(destination)
                if not specs:
                    raise
                # No executor has declared the account's queues yet (an account made after start-up, an executor not
                # started): declare them as its consumer will (same specs, so the same arguments), and the message
                # waits in its queue instead of failing.
                for spec in specs:
                    await self._bus.declare_queue(spec)
                outbox_queues_declared_total.inc(len(specs))
                log.info("executor queues declared for an account no executor serves yet", queues=[s.name for s in specs])
                await self._send(destination, rows)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001  every failure is retried: the row stays until the bus confirms
            return exc
        for row in rows:
            outbox_published_total.labels(exchange=row.exchange).inc()
        return None

    async def _send(self, destination: Destination, rows: list[Pending]) -> None:
        exchange, routing_key = destination
        if len(rows) == 1:
            await self._bus.publish(rows[0].message, exchange=exchange, routing_key=routing_key)
        else:
            await self._bus.publish_many([Outgoing(r.message, exchange=exchange, routing_key=routing_key) for r in rows])

    def _note_failure(self, destination: Destination, rows: list[Pending], error: BaseException) -> None:
        count = self._failures.get(destination, 0) + 1
        self._failures[destination] = count
        delay = min(self.retry_max_s, self.retry_min_s * 2 ** (count - 1))
        self._retry_at[destination] = time.monotonic() + delay
        self._failed.append(([r.id for r in rows], _describe(error)))
        outbox_publish_failures_total.labels(exchange=destination[0], error=type(error).__name__).inc(len(rows))
        fields = dict(
            exchange=destination[0], routing_key=destination[1], rows=[r.id for r in rows], attempt=count,
            retry_in_s=round(delay, 3), error=repr(error),
        )
        if count == 1 or count % 20 == 0:
            log.warning("outbox publish failed; kept and retried", **fields)
        else:
            log.debug("outbox publish failed again", **fields)

    async def _write_marks(self) -> None:
        """One UPDATE for every row confirmed since the last one (published_at), one per failed batch (attempts)."""
        if not self._unmarked and not self._failed:
            return
        ids = list(self._unmarked)
        failed, self._failed = self._failed, []
        try:
            async with transaction(self._sessions) as session:
                await mark_published(session=session, ids=ids, at=self._now())
                for row_ids, error in failed:
                    await record_failure(session=session, ids=row_ids, error=error)
        except Exception as exc:  # noqa: BLE001  the marks are written on a later try; a crash before republishes (harmless)
            log.warning("outbox marks not written; retried later", rows=len(ids), error=repr(exc))
            return
        for row_id in ids:
            self._unmarked.pop(row_id, None)

    # --- rows no live relay holds ---------------------------------------------------------------------------------

    async def sweep(self, *, min_age_s: float | None = None) -> int:
        """Publish unpublished rows this relay does not hold (a crashed process's), oldest first; return how many.

        Rows younger than `min_age_s` are left to the relay that wrote them (0 at start-up: take everything). On
        PostgreSQL each batch stays locked while it is published and marked, so relays sweeping at once skip each
        other's rows. A row that fails is adopted: this relay retries it like its own. Never raises.
        """
        min_age_s = self.sweep_min_age_s if min_age_s is None else min_age_s
        published = 0
        try:
            while True:
                older_than = self._now() - timedelta(seconds=min_age_s) if min_age_s > 0 else None
                async with transaction(self._sessions) as session:
                    exclude = [*self._pending, *self._unmarked, *self._poisoned]
                    rows = await unpublished(session=session, limit=self.batch_size, older_than=older_than, exclude=exclude)
                    if not rows:
                        break
                    groups: dict[Destination, list[Pending]] = {}
                    for row in rows:
                        try:
                            message, _ = decode(row.message_type, row.body.encode())
                        except InvalidMessage as exc:
                            self._poisoned.add(row.id)
                            log.error("outbox row does not decode; left unpublished", row=row.id, type=row.message_type, error=str(exc))
                            await record_failure(session=session, ids=[row.id], error=f"undecodable: {exc}")
                            continue
                        pending = Pending(id=row.id, exchange=row.exchange, routing_key=row.routing_key, message=message)
                        groups.setdefault(pending.destination, []).append(pending)
                    done: list[int] = []
                    for destination, group, error in await self._publish_groups(groups) if groups else []:
                        if error is None:
                            done += [r.id for r in group]
                        else:
                            for row in group:
                                self._pending[row.id] = row
                            self._note_failure(destination, group, error)
                    await mark_published(session=session, ids=done, at=self._now())
                    published += len(done)
                if len(rows) < self.batch_size:
                    break
            if published:
                log.info("outbox rows left unpublished by an earlier process published", rows=published)
        except Exception as exc:  # noqa: BLE001  the next sweep tries again
            log.warning("outbox sweep failed", error=repr(exc))
        if self._pending:
            self._ensure_task()
        outbox_unpublished.set(len(self._pending))
        return published

    async def _prune(self) -> None:
        try:
            async with transaction(self._sessions) as session:
                removed = await prune(session=session, published_before=self._now() - timedelta(seconds=self.retain_s))
            if removed:
                log.debug("outbox rows pruned", rows=removed)
        except Exception as exc:  # noqa: BLE001  pruning is housekeeping; the next interval tries again
            log.warning("outbox prune failed", error=repr(exc))

    # --- the background task ------------------------------------------------------------------------------------

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="outbox:relay")
        else:
            self._wake.set()

    def _wait_s(self) -> float | None:
        now = time.monotonic()
        waits = []
        if self._pending:
            destinations = {row.destination for row in self._pending.values()}
            waits.append(min(self._retry_at.get(d, now) for d in destinations) - now)
        if self._unmarked or self._failed:
            waits.append(self.retry_max_s)
        if self._started:
            waits.append(min(self._next_sweep, self._next_prune) - now)
        return max(0.0, min(waits)) if waits else None

    async def _run(self) -> None:
        """Retry what failed (with its back-off), sweep and prune while started; without `start` (a relay only
        kicked), end once nothing is left."""
        while True:
            wait_s = self._wait_s()
            if wait_s is None:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):  # not wait_for: on 3.11 it can lose a cancel
                    await self._wake.wait()
            try:
                if self._pending or self._unmarked or self._failed:
                    await self.kick()
                now = time.monotonic()
                if self._started and now >= self._next_sweep:
                    await self.sweep()
                    self._next_sweep = time.monotonic() + self.sweep_interval_s
                if self._started and now >= self._next_prune:
                    await self._prune()
                    self._next_prune = time.monotonic() + self.prune_interval_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  the task must outlive any one failure
                log.error("outbox relay loop failed", error=repr(exc))
                await asyncio.sleep(self.retry_max_s)
