"""Position rules as pure functions (no I/O, no clock): the trailing stop and the early exits. The live position monitor
and the backtester call the same functions, so a backtest trails and exits exactly as live does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from shared.symbols import Side, SymbolSpec

TrailMode = Literal["off", "pips", "atr"]


@dataclass(frozen=True, slots=True)
class TrailRule:
    """How a stop trails the price.

    `pips`: `distance_pips` behind the price. `atr`: `atr_multiple` x ATR(`atr_period`) of closed M1 bars behind it.
    Trailing starts once the position is `activation_pips` in profit; a move smaller than `step_pips` is skipped
    (fewer modify requests).
    """

    mode: TrailMode = "off"
    distance_pips: float = 10.0
    atr_period: int = 14
    atr_multiple: float = 2.0
    activation_pips: float = 0.0
    step_pips: float = 0.0


@dataclass(frozen=True, slots=True)
class ExitRule:
    """Early exits: `time_stop_min` (0: off) closes a position held that long; `opposite_signal` closes a bot's
    positions on a symbol when it is sent an order for the other side of that symbol; `invalidation` closes a position
    once its strategy's setup no longer holds (shared/strategies/invalidation.py; range_reversion's ADX or range)."""

    time_stop_min: float = 0.0
    opposite_signal: bool = False
    invalidation: bool = True


def trailing_stop(
    *,
    side: Side,
    open_price: float,
    sl: float | None,
    bid: float,
    ask: float,
    spec: SymbolSpec,
    rule: TrailRule,
    atr: float | None = None,
) -> float | None:
    """The new stop for a position of `side` at this bid/ask, or None to leave it.

    - only ever tightens (a long's stop only rises, a short's only falls);
    - a long is measured from the bid, a short from the ask (they close there), and the new stop keeps at least the
      symbol's stops level from that price (strictly beyond it when the level is 0): MT5 refuses closer stops (10016);
    - inside the freeze level (the current stop that close to the price) MT5 refuses any modify (10029): no move.
    """
    if rule.mode == "off":
        return None
    if rule.mode == "atr":
        if atr is None or not atr > 0:
            return None
        distance = rule.atr_multiple * atr
    else:
        distance = spec.pips_to_price(rule.distance_pips)
    if distance <= 0:
        return None
    buy = side == "buy"
    price = bid if buy else ask
    profit = (price - open_price) if buy else (open_price - price)
    if profit < spec.pips_to_price(rule.activation_pips) - 1e-12:
        return None
    if sl is not None and spec.freeze_level > 0 and abs(price - sl) <= spec.freeze_level * spec.point + 1e-12:
        return None
    gap = max(spec.stops_distance, spec.point)
    if buy:
        candidate = min(price - distance, price - gap)
    else:
        candidate = max(price + distance, price + gap)
    candidate = spec.round_price(candidate)
    # Rounding may bring it back inside the stops level: step away by one point.
    if buy and price - candidate < gap - 1e-12:
        candidate = spec.round_price(candidate - spec.point)
    if not buy and candidate - price < gap - 1e-12:
        candidate = spec.round_price(candidate + spec.point)
    step = spec.pips_to_price(rule.step_pips)
    if sl is not None:
        if buy and candidate <= sl + step + 1e-12:
            return None
        if not buy and candidate >= sl - step - 1e-12:
            return None
    return candidate


def time_stop_hit(*, opened_at: datetime, now: datetime, rule: ExitRule) -> bool:
    """Whether a position opened at `opened_at` has been held for the rule's time stop."""
    return rule.time_stop_min > 0 and now - opened_at >= timedelta(minutes=rule.time_stop_min)


def opposite_signal_exit(*, position_side: Side, order_side: Side, rule: ExitRule) -> bool:
    """Whether an order for `order_side` closes the same bot's `position_side` position on that symbol first."""
    return rule.opposite_signal and position_side != order_side
