"""The seed's scan line, `[ScalperTrade] bot=.. symbol=.. strategies=.. signals=.. decisions=.. orders=..`, one per bot per scan."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from shared.db.models import Bot, Decision, SignalRow
from shared.messages import ScanReport


@dataclass(frozen=True, slots=True)
class ScanLine:
    bot: int
    symbol: str
    strategies: int  # enabled strategies evaluated
    signals: int  # new signals of this window (a re-scanned bar's signal counts in the window that first made it)
    decisions: int  # of those, decided `open`
    orders: int  # order intents sent for them
    undecided: tuple[str, ...] = ()  # signal ids of the report with no decision yet

    def text(self) -> str:
        return (
            f"[ScalperTrade] bot={self.bot} symbol={self.symbol} strategies={self.strategies} "
            f"signals={self.signals} decisions={self.decisions} orders={self.orders}"
        )

    def fields(self) -> dict:
        out = asdict(self)
        out.pop("undecided")
        return out


async def scan_lines(*, session: AsyncSession, report: ScanReport) -> list[ScanLine]:
    """One line per known bot of the report (a bot deleted since the scan is left out)."""
    window_id = str(report.window_id)
    lines = []
    for scan in report.bots:
        bot = await session.get(Bot, scan.bot_id)
        if bot is None:
            continue
        wanted = [str(s) for s in scan.signal_ids]
        decided = set()
        if wanted:
            decided = set((await session.execute(select(Decision.signal_id).where(Decision.signal_id.in_(wanted)))).scalars())
        new_signals = (
            await session.execute(
                select(func.count()).select_from(SignalRow).where(SignalRow.window_id == window_id, SignalRow.bot_id == bot.id)
            )
        ).scalar_one()
        opened = (
            await session.execute(
                select(func.count(Decision.id), func.count(Decision.client_order_id))
                .join(SignalRow, SignalRow.signal_id == Decision.signal_id)
                .where(SignalRow.window_id == window_id, Decision.bot_id == bot.id, Decision.action == "open")
            )
        ).one()
        lines.append(
            ScanLine(
                bot=bot.id,
                symbol=bot.symbol,
                strategies=len(scan.strategies),
                signals=int(new_signals),
                decisions=int(opened[0]),
                orders=int(opened[1]),
                undecided=tuple(s for s in wanted if s not in decided),
            )
        )
    return lines
