"""What a trade costs in its own risk units: the spread a signal meets and the R it loses to spread and commission.

The strategy worker and the backtester put the signal bar's spread in the signal's features (`spread_points`) with
`spread_points_of`; the decision's cost gates and the calibration's expected R read it back.
"""

from __future__ import annotations

import numpy as np

from shared.bars import Bars
from shared.symbols import SymbolSpec


def spread_points_of(bars: Bars, spec: SymbolSpec) -> float:
    """The spread of the window's newest bar, in points; a window without spreads (all zero) gets the symbol's typical
    one, as the backtester fills a file without spreads (scalper/backtest/engine.spreads_for)."""
    if len(bars) == 0 or not np.any(bars.spread != 0):
        return float(spec.typical_spread_points)
    return float(bars.spread[-1])


def commission_price(spec: SymbolSpec, commission_per_lot: float, price: float) -> float:
    """A round-turn commission per lot (account currency, USD here) as a price distance: what the price must move to
    pay it, for any volume (both scale with the lots)."""
    if commission_per_lot <= 0:
        return 0.0
    per_unit = commission_per_lot / spec.contract_size  # USD per unit of the base
    if spec.quote_currency == "USD":
        return per_unit
    if spec.base_currency == "USD":
        return per_unit * price  # quote per base
    return per_unit


def cost_r(*, entry: float, stop: float, spread_points: float, spec: SymbolSpec, commission_per_lot: float = 0.0) -> float:
    """What a trade pays beyond its levels, in R (stop distances), on top of P(target before stop) as the first touch
    judges it (scalper/calibrate/outcomes.py): commission, and for a long the spread. A long buys at the ask and exits at
    its levels on the bid: it wins T - s or loses S + s, so the spread is a cost in money. A short sells at the bid and
    its levels trigger on the ask and fill at the level: it wins T or loses S exactly; its spread is already in the
    probability (the ask starts a spread nearer the stop), so counting it here too would count it twice."""
    risk = abs(entry - stop)
    if not risk > 0:
        return float("inf")
    spread = spec.points_to_price(spread_points) if stop < entry else 0.0
    return (spread + commission_price(spec, commission_per_lot, entry)) / risk


def expected_r_net(p_win: float, *, reward_r: float, cost: float) -> float:
    """The expected result of a trade in R, net of costs: win `reward_r` with p_win, lose 1 R otherwise, pay `cost` R."""
    return p_win * reward_r - (1.0 - p_win) - cost
