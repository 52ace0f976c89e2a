"""The decision's first seven refusals without building a Signal: the checks that need nothing but the bot's rules,
the signal's score and the exposure counts (services/decision/risk.REASONS lists them first, so when one fails it is
the decision's reason whatever the later checks say). The backtester asks this first and hands only the signals it
passes to `risk.decide`, which runs every check again and stays the one definition of a decision; a test holds the
two equal (tests/backtest/test_refusals.py)."""

from __future__ import annotations

from services.decision.risk import REASONS, SL_TP_MODES, BotRules

BOT_REASONS = REASONS[:7]
assert BOT_REASONS == ("bot_not_active", "auto_trade_off", "invalid_sl_tp_mode", "score_below_min",
                       "max_concurrent_positions", "max_per_symbol", "max_trades_per_day"), BOT_REASONS


def bot_refusal(rules: BotRules, *, status: str, score: float, open_positions: int, open_on_symbol: int,
                trades_today: int) -> str | None:
    """The first of BOT_REASONS that fails (risk.run_checks' own comparisons), or None when all seven pass."""
    if status != "active":
        return "bot_not_active"
    if not rules.auto_trade:
        return "auto_trade_off"
    if rules.sl_tp_mode not in SL_TP_MODES:
        return "invalid_sl_tp_mode"
    if not score >= rules.decision_min_score:
        return "score_below_min"
    if not open_positions < rules.risk_max_concurrent_positions:
        return "max_concurrent_positions"
    if not open_on_symbol < rules.risk_max_per_symbol:
        return "max_per_symbol"
    if not trades_today < rules.max_trades_per_day:
        return "max_trades_per_day"
    return None
