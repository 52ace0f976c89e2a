"""The kill switch's P&L rule, pure: no database, no bus. The decision service (killswitch.py) and the backtester
(scalper/backtest) both judge a day's loss with it, so a backtest trips where live would, without importing the
service's persistence."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DailyPnl:
    realised: float
    open: float
    day_start_balance: float | None

    @property
    def total(self) -> float:
        return self.realised + self.open

    @property
    def loss_pct(self) -> float | None:
        """The day's loss as a percentage of the day-start balance (positive when losing); None without a balance."""
        if not self.day_start_balance or self.day_start_balance <= 0:
            return None
        return -self.total / self.day_start_balance * 100.0


def daily_loss_tripped(pnl: DailyPnl, *, limit_pct: float) -> bool:
    """True when the day's loss has passed the limit (percent of the balance at the broker day's start)."""
    loss = pnl.loss_pct
    return loss is not None and loss > limit_pct
