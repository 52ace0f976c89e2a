"""Alerts that reach people: order filled, position closed, kill switch tripped (from decision's own events), and
executor down or Algo Trading off (Prometheus' alerts, through Alertmanager's webhook), sent to each user's
notification URLs with apprise (Telegram, Discord, Slack, email, JSON webhooks...).

Never on the hot path: `emit` only puts the alert on a bounded queue (a full queue drops it, counted and logged), and
one background task resolves whose it is, opens the sealed URLs and sends. A URL that fails is counted and logged
(its scheme only: the URL holds the service's token) and never retried into the next alert's way.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from contextlib import suppress
from dataclasses import dataclass
from typing import Protocol

import apprise
from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from shared.db.models import Bot, NotificationUrl
from shared.logging import get_logger
from shared.secrets import current_key, seal, unseal

log = get_logger(__name__)
# apprise's own log lines may quote a URL (and so its token): ours say what failed, with the scheme only.
logging.getLogger("apprise").setLevel(logging.CRITICAL)

notifications_total = Counter("notifications_total", "Alerts sent to people's notification URLs, by kind and result", ["kind", "result"])

KINDS = ("order_filled", "position_closed", "kill_switch", "executor_down", "algo_trading_off", "alert", "test")
QUEUE_SIZE = 1000
SEEN_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str
    title: str
    body: str
    bot_id: int | None = None  # whose: the bot's owner
    user_id: int | None = None  # or this user; neither: every user with a notification URL (an operations alert)
    key: str = ""  # the same key twice (a redelivered event) is sent once


class AlertSink(Protocol):
    def emit(self, alert: Alert) -> None: ...


class NoAlerts:
    def emit(self, alert: Alert) -> None:
        return None


NO_ALERTS = NoAlerts()


def order_filled(decision, report) -> Alert:
    return Alert(
        kind="order_filled", bot_id=decision.bot_id, key=f"fill:{decision.client_order_id}",
        title=f"Order filled: {decision.symbol} {decision.side} {decision.volume}",
        body=f"Bot {decision.bot_id}: {decision.side} {decision.volume} {decision.symbol} filled at {report.price} "
             f"(ticket {report.ticket}, SL {decision.sl}, TP {decision.tp}).",
    )


def position_closed(decision, event) -> Alert:
    return Alert(
        kind="position_closed", bot_id=decision.bot_id, key=f"close:{event.account_id}:{event.ticket}",
        title=f"Position closed: {event.symbol} {event.side} {event.volume}, P&L {event.pnl}",
        body=f"Bot {decision.bot_id}: {event.side} {event.volume} {event.symbol} opened at {event.open_price} closed at "
             f"{event.close_price} ({event.close_reason}), P&L {event.pnl}.",
    )


def kill_switch(bot) -> Alert:
    return Alert(
        kind="kill_switch", bot_id=bot.id, key=f"kill:{bot.id}:{bot.updated_at}",
        title=f"Kill switch tripped: bot {bot.id} ({bot.symbol})", body=f"{bot.status_reason}. Its positions are being closed; it trades "
        "again only once a person resumes it.",
    )


def from_alertmanager(payload: dict) -> list[Alert]:
    """Alertmanager's webhook body (version 4) as alerts for everyone: ExecutorDown -> executor_down,
    AlgoTradingOff -> algo_trading_off, any other rule -> alert."""
    out = []
    for item in payload.get("alerts") or []:
        if not isinstance(item, dict):
            continue
        labels, notes = item.get("labels") or {}, item.get("annotations") or {}
        name = str(labels.get("alertname", "alert"))
        kind = {"ExecutorDown": "executor_down", "AlgoTradingOff": "algo_trading_off"}.get(name, "alert")
        status = str(item.get("status", "firing"))
        title = f"[{status}] {notes.get('summary') or name}"
        body = str(notes.get("description") or name)
        out.append(Alert(kind=kind, title=title[:250], body=body[:2000], key=f"am:{item.get('fingerprint')}:{status}:{item.get('startsAt')}"))
    return out


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def check_url(url: str) -> str | None:
    """Why apprise cannot use `url`, or None."""
    if not scheme_of(url):
        return "write a URL such as tgram://bottoken/chatid or json://host/path"
    if not apprise.Apprise().add(url):
        return f"apprise does not understand this {scheme_of(url)}:// URL (see its wiki for the scheme's shape)"
    return None


async def add_url(*, session: AsyncSession, user_id: int, url: str, label: str, now) -> NotificationUrl:
    row = NotificationUrl(user_id=user_id, label=label, scheme=scheme_of(url)[:32], url_sealed=seal(url, current_key()), created_at=now)
    session.add(row)
    await session.flush()
    return row


class Notifier:
    """The background sender (AlertSink): a bounded queue and one task."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, queue_size: int = QUEUE_SIZE) -> None:
        self._sessions = sessions
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task | None = None
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="decision:alerts")

    async def stop(self, *, drain_s: float = 5.0) -> None:
        if self._task is None:
            return
        with suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout=drain_s)
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def emit(self, alert: Alert) -> None:
        if alert.key:
            if alert.key in self._seen:
                return
            self._seen[alert.key] = None
            while len(self._seen) > SEEN_KEPT:
                self._seen.popitem(last=False)
        try:
            self._queue.put_nowait(alert)
        except asyncio.QueueFull:
            self.dropped += 1
            notifications_total.labels(kind=alert.kind, result="dropped").inc()
            log.warning("alert dropped: the alert queue is full", kind=alert.kind, bot_id=alert.bot_id, dropped=self.dropped)

    async def idle(self) -> None:
        """Wait until every alert emitted so far has been sent or has failed (tests, shutdown)."""
        await self._queue.join()

    async def _run(self) -> None:
        while True:
            alert = await self._queue.get()
            try:
                await self.deliver(alert)
            except Exception as exc:  # noqa: BLE001  one alert's failure must not stop the sender
                self.failed += 1
                notifications_total.labels(kind=alert.kind, result="failed").inc()
                log.error("alert not sent", kind=alert.kind, bot_id=alert.bot_id, error=f"{type(exc).__name__}: {exc}"[:300])
            finally:
                self._queue.task_done()

    async def _urls(self, alert: Alert) -> list[tuple[int, str, str]]:
        async with self._sessions() as session:
            stmt = select(NotificationUrl)
            if alert.user_id is not None:
                stmt = stmt.where(NotificationUrl.user_id == alert.user_id)
            elif alert.bot_id is not None:
                stmt = stmt.join(Bot, Bot.user_id == NotificationUrl.user_id).where(Bot.id == alert.bot_id)
            rows = list((await session.execute(stmt.order_by(NotificationUrl.id))).scalars())
        key = current_key()
        return [(row.id, row.scheme, unseal(row.url_sealed, key)) for row in rows]

    async def deliver(self, alert: Alert) -> int:
        """Send `alert` to each URL it is for; return how many took it."""
        took = 0
        for url_id, scheme, url in await self._urls(alert):
            took += await self.send_to(url_id=url_id, scheme=scheme, url=url, alert=alert)
        return took

    async def send_to(self, *, url_id: int, scheme: str, url: str, alert: Alert) -> bool:
        sender = apprise.Apprise()
        ok = bool(sender.add(url) and await sender.async_notify(body=alert.body, title=alert.title))
        if ok:
            self.sent += 1
            notifications_total.labels(kind=alert.kind, result="sent").inc()
        else:
            self.failed += 1
            notifications_total.labels(kind=alert.kind, result="failed").inc()
            log.warning("alert not delivered", kind=alert.kind, url_id=url_id, scheme=scheme, failed=self.failed)
        return ok
