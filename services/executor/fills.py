"""The paper-fill model shared by the paper broker and the backtester (architecture.md, "Fills").

Pure scalar functions over plain floats and a SymbolSpec: no I/O, no clock, cheap enough to call once per bar.
"""

from __future__ import annotations

from typing import Literal

from shared.symbols import Side, SymbolSpec

ExitReason = Literal["sl", "tp"]


def ask_price(bid: float, spread_points: float, spec: SymbolSpec) -> float:
    """Ask = bid + spread: MT5 bars are bid prices and carry their spread in points."""
    return bid + spread_points * spec.point


def entry_price(side: Side, bid: float, spread_points: float, spec: SymbolSpec, slippage_points: float = 0) -> float:
    """The price a market order opening `side` fills at, slippage always against the trader."""
    slip = slippage_points * spec.point
    if side == "buy":
        # A buy fills at the ask.
        return spec.round_price(bid + spread_points * spec.point + slip)
    # A sell fills at the bid.
    return spec.round_price(bid - slip)


def exit_price(side: Side, bid: float, spread_points: float, spec: SymbolSpec, slippage_points: float = 0) -> float:
    """The price a position of `side` closes at by a market order: a long sells at the bid, a short buys at the ask."""
    return entry_price("sell" if side == "buy" else "buy", bid, spread_points, spec, slippage_points)


def mark_price(side: Side, bid: float, spread_points: float, spec: SymbolSpec) -> float:
    """The price a position of `side` is valued at now (what closing it would get, without slippage)."""
    return exit_price(side, bid, spread_points, spec)


def exit_on_bar(
    side: Side,
    sl: float | None,
    tp: float | None,
    *,
    open: float,  # noqa: A002 - the bar's field name
    high: float,
    low: float,
    spread_points: float,
    spec: SymbolSpec,
) -> tuple[float, ExitReason] | None:
    """Whether one bar (bid prices) takes a position of `side` out at its stop or target: (fill price, reason) or None.

    Call it for each bar that opened at or after the position was filled, oldest first, and stop at the first hit.
    """
    if side == "buy":
        # A long's stop and target trigger on the bid: the bar's own prices.
        stop_hit = sl is not None and low <= sl
        target_hit = tp is not None and high >= tp
        if stop_hit:
            # Both touched in one bar: the stop is taken (the order inside the bar is unknown; assume the worst).
            # A bar that opens through the stop fills at its open, not at the stop.
            return spec.round_price(min(open, sl)), "sl"
        if target_hit:
            # A target is a limit order: a bar that opens beyond it fills at the (better) open, as backtesting.py does.
            return spec.round_price(max(open, tp)), "tp"
        return None
    # A short's stop and target trigger on the ask: the bar's prices plus its spread.
    spread = spread_points * spec.point
    ask_open, ask_high, ask_low = open + spread, high + spread, low + spread
    stop_hit = sl is not None and ask_high >= sl
    target_hit = tp is not None and ask_low <= tp
    if stop_hit:
        # Both touched: the stop; a gap through the stop fills at the bar's open ask (open + spread).
        return spec.round_price(max(ask_open, sl)), "sl"
    if target_hit:
        return spec.round_price(min(ask_open, tp)), "tp"
    return None


def stops_problem(side: Side, bid: float, spread_points: float, spec: SymbolSpec, sl: float | None, tp: float | None) -> str | None:
    """Why `sl`/`tp` cannot be set on a position of `side` at this price, or None.

    MT5's rule: a long's stop and target are measured from the bid, a short's from the ask, and each must be
    at least the symbol's stops level away (strictly beyond the price when the level is 0).
    """
    price = bid if side == "buy" else ask_price(bid, spread_points, spec)
    gap = spec.stops_distance
    direction = 1.0 if side == "buy" else -1.0
    if sl is not None and direction * (price - sl) < max(gap, spec.point / 2):
        where = "below the bid" if side == "buy" else "above the ask"
        return f"invalid stops: sl {sl} must be {where} {spec.round_price(price)} by at least {spec.stops_level} points"
    if tp is not None and direction * (tp - price) < max(gap, spec.point / 2):
        where = "above the bid" if side == "buy" else "below the ask"
        return f"invalid stops: tp {tp} must be {where} {spec.round_price(price)} by at least {spec.stops_level} points"
    return None
