"""A decision left `sent` is always answered: its OrderIntent goes out again once its expiry has passed by a grace.

The outbox hands an intent to the bus; nothing after that is decision's. If the message is lost on its way (the
in-memory bus dies with its process: a SIGKILL between the relay's publish and the executor's first commit; on
RabbitMQ a dead-lettered intent, a purged queue) or the executor's report of it is lost, the decision would stay
`sent` for ever: a leg risk counts as open, that blocks its bot at max_per_symbol. So decision re-sends the SAME
intent (same message id and client_order_id, through the outbox) for every decision still `sent` whose expiry has
passed by `SCALPER_INTENT_RESEND_GRACE_S`, at start and every grace. The executor keeps one order per
client_order_id: for an order it holds it reports the order's status again (settling one left `sending` first),
and for one it never saw, past its expiry, it records it `expired` without placing it and reports that. Either
answer settles the decision (decisions read model, events.py).

Only past the expiry, so a re-send never competes with a first copy still on its way: the executor would place
neither. A decision that stays unanswered (no executor running) is re-sent with a doubling back-off, at most every
`MAX_BACKOFF` graces, and again at each start.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from prometheus_client import Counter
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.decision import outgoing
from services.decision.decisions import order_intent_for
from shared.db.engine import transaction
from shared.db.models import Bot, Decision, SignalRow
from shared.logging import get_logger
from shared.outbox import Pending
from shared.strategies.invalidation import strategy_exit
from shared.timeutil import Clock

log = get_logger(__name__)

BATCH = 500  # decisions re-sent per transaction
MAX_BACKOFF = 64  # graces between two re-sends of one decision, at most

intents_resent_total = Counter(
    "decision_intents_resent_total", "Order intents sent again for a decision still `sent` past its expiry and the grace"
)

_D, _S, _B = Decision.__table__, SignalRow.__table__, Bot.__table__
# The decision's columns, and what its intent was built from: the signal's entry and the strategy's early exit.
_OVERDUE = (
    select(_D, _S.c.entry, _S.c.strategy, _S.c.features, _B.c.strategy_params)
    .join(_S, _S.c.signal_id == _D.c.signal_id)
    .join(_B, _B.c.id == _D.c.bot_id)
    .where(_D.c.order_status == "sent", _D.c.action == "open", _D.c.expires_at <= bindparam("before"), _D.c.id > bindparam("after"))
    .order_by(_D.c.id)
    .limit(BATCH)
)


def _intent(row):
    invalidation = strategy_exit(row.strategy, (row.strategy_params or {}).get(row.strategy), row.features)
    return order_intent_for(row, entry=row.entry, invalidation=invalidation)


class IntentResender:
    """Re-sends the intents of decisions still `sent` past their expiry and `grace_s` (engine-clock seconds).

    `kick` is the decision service's `send_committed`: the relay publishes the rows once their transaction has
    committed. `attempts` remembers, in this process, how often each decision was re-sent (its back-off); a restart
    forgets it, so every overdue decision goes out again at start (an in-memory bus lost its copy with the process).
    """

    def __init__(
        self, *, sessions: async_sessionmaker[AsyncSession], clock: Clock, grace_s: float,
        kick: Callable[[Sequence[Pending]], Awaitable[None]],
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self.grace_s = grace_s
        self._kick = kick
        self.attempts: dict[int, int] = {}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="decision:resend")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.resend_overdue()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  the next round looks again; the decisions stay `sent` until then
                log.error("re-send of unanswered order intents failed", error=repr(exc))
            await self._clock.sleep_until(self._clock.now() + timedelta(seconds=self.grace_s))

    def _due(self, row, now: datetime) -> bool:
        """The n-th re-send waits until the expiry plus 2**n graces (n = 0 first, capped at MAX_BACKOFF graces)."""
        backoff = min(2 ** self.attempts.get(row.id, 0), MAX_BACKOFF)
        return now >= row.expires_at + timedelta(seconds=self.grace_s * backoff)

    async def resend_overdue(self) -> int:
        """Write the intent of every decision due for a re-send to the outbox, kick the relay; return how many."""
        now = self._clock.now()
        before = now - timedelta(seconds=self.grace_s)
        resent, after = 0, 0
        overdue: set[int] = set()
        while True:
            async with transaction(self._sessions) as session:
                connection = await session.connection()
                rows = (await connection.execute(_OVERDUE, {"before": before, "after": after})).all()
                overdue.update(r.id for r in rows)
                due = [r for r in rows if self._due(r, now)]
                pending = await outgoing.enqueue_intents(session=session, intents=[_intent(r) for r in due])
            for row in due:
                self.attempts[row.id] = self.attempts.get(row.id, 0) + 1
                intents_resent_total.inc()
                log.warning(
                    "order intent sent again: its decision is still `sent` past its expiry", decision_id=row.id,
                    client_order_id=row.client_order_id, bot_id=row.bot_id, expires_at=row.expires_at.isoformat(),
                    attempt=self.attempts[row.id],
                )
            await self._kick(pending)
            resent += len(due)
            if len(rows) < BATCH:
                break
            after = rows[-1].id
        # Forget the decisions that were answered (only the overdue ones are remembered).
        self.attempts = {k: v for k, v in self.attempts.items() if k in overdue}
        return resent
