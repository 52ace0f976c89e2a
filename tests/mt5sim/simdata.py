"""Builders for the MT5 simulator tests: small synthetic gold bars in July 2025 (server clock us_dst = UTC+3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from mt5sim import SimulatedMT5

START = datetime(2025, 7, 1, 12, 0, tzinfo=UTC)  # a Tuesday; the bars begin here
SYMBOL = "XAUUSDm"


def flat(n: int, price: float = 2000.0, half_range: float = 0.5) -> list[tuple[float, float, float, float]]:
    """`n` bars that open and close at `price` (tick path: open, low, high, close)."""
    return [(price, price + half_range, price - half_range, price)] * n


def bars_from(rows, start: datetime = START, *, spread: int = 10, times: list[int] | None = None) -> dict:
    """Columns of M1 bars (UTC epochs) from (open, high, low, close) rows, one a minute from `start`."""
    o, h, lo, c = (np.array(col, dtype=float) for col in zip(*rows, strict=True))
    t = np.array(times, dtype=np.int64) if times is not None else int(start.timestamp()) + 60 * np.arange(len(rows))
    return {"time": t, "open": o, "high": h, "low": lo, "close": c, "tick_volume": np.full(len(rows), 100), "spread": np.full(len(rows), spread)}


def make_sim(rows=None, *, at_bar: int = 100, select: bool = True, **options) -> SimulatedMT5:
    """An initialised simulator on the gold bars `rows`, its clock at the open of bar `at_bar`."""
    rows = rows if rows is not None else flat(300)
    options = {"server_time": "us_dst", "suffix": "m", "start": START + timedelta(minutes=at_bar), **options}
    sim = SimulatedMT5({"XAUUSD": bars_from(rows)}, **options)
    assert sim.initialize(), sim.last_error()
    if select:
        assert sim.symbol_select(SYMBOL, True)
    return sim


def market(sim, otype: int, volume: float = 0.1, **extra):
    """Send a market order the way an adapter would (FOK, the symbol's filling mode by default)."""
    request = {"action": sim.TRADE_ACTION_DEAL, "symbol": SYMBOL, "volume": volume, "type": otype, "deviation": 20,
               "magic": 42, "comment": "cid-1", "type_time": sim.ORDER_TIME_GTC, "type_filling": sim.ORDER_FILLING_FOK}
    request.update(extra)
    return sim.order_send(request)
