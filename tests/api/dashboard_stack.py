"""The embedded stack behind the dashboard's browser tests and `make screenshots`: synthetic feed, a manual clock, and
one position opened through the real path (a signal decided by decision, filled by the paper executor)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from scalper.embedded import EmbeddedStack, create_app
from shared.db.models import Bot, Decision
from shared.settings import Settings
from shared.timeutil import ManualClock
from tests.decision.decision_helpers import make_signal

START = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)


def dashboard_app(tmp_path, *, refresh_s: float = 0.5):
    """The embedded app and its stack; the demo user's key lands in `announced` once the app has started."""
    settings = Settings(
        _env_file=None, database_url=f"sqlite+aiosqlite:///{tmp_path / 'dashboard.db'}", bus_url="memory://", feed="synthetic",
        scan_mode="interval", scan_interval_s=10**9, monitor_interval_s=1, order_ttl_s=600,
        secret_key="ZmRlZmF1bHQtdGVzdC1rZXktZm9yLWRhc2hib2FyZHM=",
    )
    stack = EmbeddedStack(settings, clock=ManualClock(START))
    announced: list[str] = []
    app = create_app(stack, announce=announced.append)
    return app, stack, announced


def demo_key(announced: list[str]) -> str:
    return announced[0].rsplit(": ", 1)[1].strip()


async def scan(stack, minutes: int = 1) -> None:
    """Let `minutes` of market pass: each minute a scan, and every consumer idle after it."""
    for _ in range(minutes):
        stack.clock.advance(timedelta(minutes=1))
        await stack.market_data.scan_once()
        await stack.bus.idle(timeout=30)


async def open_position(stack) -> Decision:
    """A buy signal at the last close, decided and filled through the bus; return its decision (a refused one too)."""
    await scan(stack)
    async with stack.sessions() as session:
        bot = (await session.execute(select(Bot).order_by(Bot.id))).scalars().first()
    bars = await stack.bars(bot.symbol, 30)
    close = bars[-1]["close"]
    span = max(b["high"] for b in bars) - min(b["low"] for b in bars)
    signal = make_signal(bot, strategy=bot.enabled_strategies[0], bar_time=bars[-1]["time"], entry=close,
                         stop=round(close - span / 2, 2), target=round(close + span, 2), score=0.95)
    await stack.decision.handle_signal(signal)
    await stack.bus.idle(timeout=30)
    async with stack.sessions() as session:
        return (await session.execute(select(Decision).where(Decision.signal_id == str(signal.signal_id)))).scalar_one()


async def positions(stack, status: str = "open") -> list[Decision]:
    async with stack.sessions() as session:
        return list((await session.execute(select(Decision).where(Decision.position_status == status).order_by(Decision.id))).scalars())
