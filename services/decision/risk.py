"""The risk rules that turn a signal into `open` or `ignore`: pure functions over plain values, no I/O, no clock.

The live decision service and the backtester both call `decide`, so a backtest trades exactly as live would.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from datetime import datetime, time
from typing import Any, Literal

from shared.messages import Signal
from shared.sanity import stops_problem
from shared.symbols import Side, SymbolSpec

Action = Literal["open", "ignore"]
SL_TP_MODES = ("strategy", "fixed_pips")

# The order in which failing checks name the decision's reason (the first failing one wins); every check
# runs regardless, so the decision row shows all of them.
REASONS = (
    "bot_not_active",
    "auto_trade_off",
    "invalid_sl_tp_mode",
    "score_below_min",
    "max_concurrent_positions",
    "max_per_symbol",
    "max_trades_per_day",
    "outside_trading_hours",
    "spread_too_wide",
    "stop_within_spread",
    "expected_r_below_min",
    "netting_conflict",
    "correlation_basket",
    "margin_insufficient",
    "implausible_stops",
)

_RANK = {reason: rank for rank, reason in enumerate(REASONS)}

MAX_STOP_ATR = 20.0  # SCALPER_MAX_STOP_ATR's default: a stop or target further than this many ATR is refused
# Where a signal's ATR is found: the ATR(14) of the M1 window (pinbar, doji breakout, range reversion, trend
# pullback), or the M5 ATR of the resampled window (harami).
ATR_FEATURES = ("atr", "atr_5m")

# Correlation baskets: instrument -> +1 when buying it is long the basket's common currency, -1 when short.
# Buying EURUSD and buying USDCHF are opposite USD bets, so only legs with the same sign x side are "the same direction".
BASKETS: dict[str, dict[str, int]] = {
    "usd_majors": {"EURUSD": -1, "GBPUSD": -1, "AUDUSD": -1, "NZDUSD": -1, "USDCAD": 1, "USDCHF": 1, "USDJPY": 1},
}

TRADING_HOURS_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


def parse_trading_hours(text: str) -> tuple[time, time] | None:
    """`HH:MM-HH:MM` in UTC (a window may wrap past midnight); "" means always. Raises ValueError otherwise."""
    text = (text or "").strip()
    if not text:
        return None
    match = TRADING_HOURS_RE.match(text)
    if match is None:
        raise ValueError(f"trading_hours {text!r}: write HH:MM-HH:MM in UTC, e.g. 07:00-20:00, or leave it empty for always")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    start, end = time(h1, m1), time(h2, m2)
    if start == end:
        raise ValueError(f"trading_hours {text!r}: start and end are equal; leave it empty to trade around the clock")
    return start, end


def in_trading_hours(text: str, at: datetime) -> bool:
    window = parse_trading_hours(text)
    if window is None:
        return True
    start, end = window
    now = at.time().replace(second=0, microsecond=0, tzinfo=None)
    return start <= now < end if start < end else (now >= start or now < end)


@dataclass(frozen=True, slots=True)
class BotRules:
    """A bot's risk settings, as the `bots` table holds them."""

    decision_min_score: float = 0.3
    risk_max_concurrent_positions: int = 2
    risk_max_per_symbol: int = 1
    max_trades_per_day: int = 25
    status: str = "active"
    auto_trade: bool = True
    default_qty: float = 0.01
    sl_tp_mode: str = "strategy"
    default_sl_pips: float = 3.0
    default_tp_pips: float = 5.0
    max_spread_pips: float | None = None
    trading_hours: str = ""
    correlation_check: bool = True
    min_stop_spread_ratio: float = 3.0
    min_expected_r: float = 0.0

    @classmethod
    def from_attrs(cls, obj: Any) -> BotRules:
        """Read the rules from anything with these attributes (a `Bot` row, a backtest config); missing ones keep their default."""
        return cls(**{name: getattr(obj, name) for name in _BOT_RULES_FIELDS if hasattr(obj, name)})


_BOT_RULES_FIELDS = tuple(f.name for f in dataclasses.fields(BotRules))  # read once: fields() walks the class each call


@dataclass(frozen=True, slots=True)
class AccountRules:
    """The account's side of the rules: netting or hedging, and the leverage the margin check assumes."""

    margin_mode: str = "hedging"
    leverage: float = 100.0

    @classmethod
    def from_attrs(cls, obj: Any) -> AccountRules:
        return cls(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(cls) if getattr(obj, f.name, None) is not None})


@dataclass(frozen=True, slots=True)
class Leg:
    """One open position or order in flight on the account: whose, which instrument (canonical), which way, how big."""

    bot_id: int
    instrument: str
    side: Side
    volume: float = 0.0


@dataclass(frozen=True, slots=True)
class Exposure:
    """What is already at risk when a signal arrives. Orders sent but not yet filled count as open positions.

    open_positions: this bot's open positions plus its orders sent and not yet filled.
    open_on_symbol: the same, on the signal's instrument, over every bot of the account (one broker account
        holds one book per instrument, so two bots on it share the per-symbol limit).
    trades_today: this bot's orders sent or filled since the start of the account's broker day.

    legs: every open position and order in flight on the account (netting and correlation checks).
    margin_free: the free margin of the account's latest snapshot; None while no snapshot has arrived.
    """

    open_positions: int = 0
    open_on_symbol: int = 0
    trades_today: int = 0
    legs: tuple[Leg, ...] = ()
    margin_free: float | None = None


@dataclass(frozen=True, slots=True)
class DecisionResult:
    action: Action
    reason: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    side: Side | None = None
    volume: float | None = None
    sl: float | None = None
    tp: float | None = None


def _check(name: str, passed: bool, value: Any, limit: Any) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "value": value, "limit": limit}


def margin_required(*, spec: SymbolSpec, volume: float, price: float, leverage: float) -> float:
    """Margin in USD for `volume` lots at `price` (MT5's forex/CFD leverage formula: lots x contract x price / leverage)."""
    notional = volume * spec.contract_size
    if spec.quote_currency == "USD":
        notional *= price
    elif spec.base_currency != "USD":
        notional *= price  # a cross: in the quote currency (the documented limitation of SymbolSpec.profit)
    return notional / max(leverage, 1e-9)


def _basket_conflict(*, signal: Signal, instrument: str, legs: tuple[Leg, ...]) -> str | None:
    """The first leg on another instrument of a basket of ours that bets the same way as the signal, as text."""
    want = 1 if signal.side == "buy" else -1
    for name, members in BASKETS.items():
        if instrument not in members:
            continue
        direction = members[instrument] * want
        for leg in legs:
            if leg.instrument != instrument and leg.instrument in members:
                if members[leg.instrument] * (1 if leg.side == "buy" else -1) == direction:
                    return f"{name}: {leg.side} {leg.instrument} (bot {leg.bot_id})"
    return None


def _netting_conflict(*, signal: Signal, instrument: str, legs: tuple[Leg, ...]) -> str | None:
    for leg in legs:
        if leg.instrument == instrument and leg.bot_id != signal.bot_id and leg.side != signal.side:
            return f"{leg.side} {leg.instrument} of bot {leg.bot_id}"
    return None


def _spread_points(signal: Signal) -> float | None:
    """The signal bar's spread in points, as the strategy worker (or the backtester) put it in the features."""
    for key in ("spread_points", "spread"):
        value = signal.features.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _spread_pips(signal: Signal, spec: SymbolSpec) -> float | None:
    """The signal bar's spread in pips, when the signal carries it (`spread_points` or `spread` features, in points)."""
    points = _spread_points(signal)
    return None if points is None else spec.price_to_pips(spec.points_to_price(points))


def stop_spread_check(*, rules: BotRules, signal: Signal, spec: SymbolSpec) -> dict[str, Any]:
    """`stop_within_spread`: the order's stop at least min_stop_spread_ratio spreads from the entry. A stop of 1-3
    spreads loses a large part of a stop's worth to the spread alone (issue 19: 0.45-1.1 R per EURUSD trade). The value is
    the stop distance in spreads; a signal without a spread (or a zero one) passes, and the limit says so."""
    sl, _ = _raw_stops(rules=rules, signal=signal, spec=spec)
    points = _spread_points(signal)
    if sl is None or points is None or points <= 0:
        return _check("stop_within_spread", True, None, f"{rules.min_stop_spread_ratio:g} (spread unknown)")
    ratio = abs(signal.entry - sl) / spec.points_to_price(points)
    return _check("stop_within_spread", ratio >= rules.min_stop_spread_ratio, round(ratio, 3), rules.min_stop_spread_ratio)


def expected_r_check(*, rules: BotRules, signal: Signal) -> dict[str, Any]:
    """`expected_r_below_min`: with a calibration (the signal carries p_win), its expected R net of costs at least the
    bot's min_expected_r. Without one the check passes with no value: there is nothing calibrated to hold it to."""
    if signal.p_win is None or signal.expected_r_net is None:
        return _check("expected_r_below_min", True, None, f"{rules.min_expected_r:g} (no calibration)")
    value = signal.expected_r_net
    return _check("expected_r_below_min", value >= rules.min_expected_r, round(value, 4), rules.min_expected_r)


def signal_atr(signal: Signal) -> float | None:
    """The window's ATR the strategy saw (ATR_FEATURES), or None when the signal carries none."""
    for key in ATR_FEATURES:
        value = signal.features.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


def stops_check(*, rules: BotRules, signal: Signal, spec: SymbolSpec, max_stop_atr: float = MAX_STOP_ATR) -> dict[str, Any]:
    """`implausible_stops`: the order's stop and target (before the stops level pushes them out) on the right side
    of the entry and within max_stop_atr x the window's ATR of it. A signal without an ATR has only its sides and
    prices checked; the check says so in its limit."""
    sl, tp = _raw_stops(rules=rules, signal=signal, spec=spec)
    atr = signal_atr(signal)
    problem, far_atr = stops_problem(side=signal.side, entry=signal.entry, sl=sl, tp=tp, atr=atr, max_atr=max_stop_atr)
    value: Any = problem if problem and far_atr is None else (None if far_atr is None else round(far_atr, 3))
    limit: Any = max_stop_atr if atr is not None else "atr unknown: right side of the entry only"
    return _check("implausible_stops", problem is None, value, limit)


def run_checks(
    *, rules: BotRules, signal: Signal, exposure: Exposure, spec: SymbolSpec | None = None, account: AccountRules | None = None,
    max_stop_atr: float = MAX_STOP_ATR,
) -> list[dict[str, Any]]:
    """Every risk check with its value and limit; a check's `name` is the reason it gives when it fails.

    Without `spec` only the bot's own checks run (the account-wide checks need the instrument and its sizes).
    """
    checks = [
        _check("bot_not_active", rules.status == "active", rules.status, "active"),
        _check("auto_trade_off", rules.auto_trade, rules.auto_trade, True),
        _check("invalid_sl_tp_mode", rules.sl_tp_mode in SL_TP_MODES, rules.sl_tp_mode, list(SL_TP_MODES)),
        _check("score_below_min", signal.score >= rules.decision_min_score, signal.score, rules.decision_min_score),
        _check(
            "max_concurrent_positions",
            exposure.open_positions < rules.risk_max_concurrent_positions,
            exposure.open_positions,
            rules.risk_max_concurrent_positions,
        ),
        _check("max_per_symbol", exposure.open_on_symbol < rules.risk_max_per_symbol, exposure.open_on_symbol, rules.risk_max_per_symbol),
        _check("max_trades_per_day", exposure.trades_today < rules.max_trades_per_day, exposure.trades_today, rules.max_trades_per_day),
    ]
    if spec is None:
        return checks
    account = account or AccountRules()
    instrument = spec.name
    try:
        hours_ok = in_trading_hours(rules.trading_hours, signal.bar_time)
    except ValueError:
        hours_ok = False
    at = signal.bar_time  # "%H:%M" (strftime costs more than the rest of the check)
    checks.append(_check("outside_trading_hours", hours_ok, f"{at.hour:02d}:{at.minute:02d}", rules.trading_hours or "always"))
    spread = _spread_pips(signal, spec)
    spread_ok = rules.max_spread_pips is None or spread is None or spread <= rules.max_spread_pips
    checks.append(_check("spread_too_wide", spread_ok, None if spread is None else round(spread, 3), rules.max_spread_pips))
    checks.append(stop_spread_check(rules=rules, signal=signal, spec=spec))
    checks.append(expected_r_check(rules=rules, signal=signal))
    netting = _netting_conflict(signal=signal, instrument=instrument, legs=exposure.legs) if account.margin_mode == "netting" else None
    checks.append(_check("netting_conflict", netting is None, netting, "no opposite position of another bot"))
    basket = _basket_conflict(signal=signal, instrument=instrument, legs=exposure.legs) if rules.correlation_check else None
    checks.append(_check("correlation_basket", basket is None, basket, "no second position the same way in a basket"))
    volume = spec.round_volume(rules.default_qty)
    needed = round(margin_required(spec=spec, volume=volume, price=signal.entry, leverage=account.leverage), 2)
    margin_ok = exposure.margin_free is None or exposure.margin_free >= needed
    checks.append(_check("margin_insufficient", margin_ok, exposure.margin_free, needed))
    checks.append(stops_check(rules=rules, signal=signal, spec=spec, max_stop_atr=max_stop_atr))
    return checks


def _raw_stops(*, rules: BotRules, signal: Signal, spec: SymbolSpec) -> tuple[float | None, float | None]:
    """The strategy's stop and target, or the bot's fixed pips from the entry."""
    if rules.sl_tp_mode == "fixed_pips":
        sl_distance = spec.pips_to_price(rules.default_sl_pips)
        tp_distance = spec.pips_to_price(rules.default_tp_pips)
        if signal.side == "buy":
            return signal.entry - sl_distance, signal.entry + tp_distance
        return signal.entry + sl_distance, signal.entry - tp_distance
    return signal.stop, signal.target


def stops_for(*, rules: BotRules, signal: Signal, spec: SymbolSpec) -> tuple[float | None, float | None]:
    """Stop and target for the order: the strategy's, or the bot's fixed pips from the entry; pushed outside
    the symbol's stops level and rounded to its digits either way."""
    sl, tp = _raw_stops(rules=rules, signal=signal, spec=spec)
    return spec.push_outside_stops(signal.side, signal.entry, sl, tp)


def decide(
    *, rules: BotRules, signal: Signal, exposure: Exposure, spec: SymbolSpec, account: AccountRules | None = None,
    max_stop_atr: float = MAX_STOP_ATR,
) -> DecisionResult:
    """Open the signal's trade, or ignore it with the first failing check as the reason."""
    checks = run_checks(rules=rules, signal=signal, exposure=exposure, spec=spec, account=account, max_stop_atr=max_stop_atr)
    failed = [_RANK[c["name"]] for c in checks if not c["passed"] and c["name"] in _RANK]
    if failed:  # the first failing check in REASONS' order names the reason
        return DecisionResult(action="ignore", reason=REASONS[min(failed)], checks=checks, side=signal.side)
    sl, tp = stops_for(rules=rules, signal=signal, spec=spec)
    return DecisionResult(
        action="open",
        reason="ok",
        checks=checks,
        side=signal.side,
        volume=spec.round_volume(rules.default_qty),
        sl=sl,
        tp=tp,
    )
