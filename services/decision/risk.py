"""The risk rules that turn a signal into `open` or `ignore`: pure functions over plain values, no I/O, no clock.

The live decision service and the backtester both call `decide`, so a backtest trades exactly as live would.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.messages import Signal
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
)


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

    @classmethod
    def from_attrs(cls, obj: Any) -> BotRules:
        """Read the rules from anything with these attributes (a `Bot` row, a backtest config)."""
        return cls(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True, slots=True)
class Exposure:
    """What is already at risk when a signal arrives. Orders sent but not yet filled count as open positions.

    open_positions: this bot's open positions plus its orders sent and not yet filled.
    open_on_symbol: the same, on the signal's instrument, over every bot of the account (one broker account
        holds one book per instrument, so two bots on it share the per-symbol limit).
    trades_today: this bot's orders sent or filled since the start of the account's broker day.
    """

    open_positions: int = 0
    open_on_symbol: int = 0
    trades_today: int = 0


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


def run_checks(*, rules: BotRules, signal: Signal, exposure: Exposure) -> list[dict[str, Any]]:
    """Every risk check with its value and limit; a check's `name` is the reason it gives when it fails."""
    return [
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


def stops_for(*, rules: BotRules, signal: Signal, spec: SymbolSpec) -> tuple[float | None, float | None]:
    """Stop and target for the order: the strategy's, or the bot's fixed pips from the entry; pushed outside
    the symbol's stops level and rounded to its digits either way."""
    if rules.sl_tp_mode == "fixed_pips":
        sl_distance = spec.pips_to_price(rules.default_sl_pips)
        tp_distance = spec.pips_to_price(rules.default_tp_pips)
        if signal.side == "buy":
            sl, tp = signal.entry - sl_distance, signal.entry + tp_distance
        else:
            sl, tp = signal.entry + sl_distance, signal.entry - tp_distance
    else:
        sl, tp = signal.stop, signal.target
    return spec.push_outside_stops(signal.side, signal.entry, sl, tp)


def decide(*, rules: BotRules, signal: Signal, exposure: Exposure, spec: SymbolSpec) -> DecisionResult:
    """Open the signal's trade, or ignore it with the first failing check as the reason."""
    checks = run_checks(rules=rules, signal=signal, exposure=exposure)
    failed = {c["name"] for c in checks if not c["passed"]}
    for reason in REASONS:
        if reason in failed:
            return DecisionResult(action="ignore", reason=reason, checks=checks, side=signal.side)
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
