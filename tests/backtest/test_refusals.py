"""The backtester's early refusals (scalper/backtest/refusals.py) give `risk.decide`'s own reason: whenever
bot_refusal names one, decide ignores the signal for that reason; when it names none, decide's reason is none of
the seven it covers (so the backtester hands exactly those signals to decide)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from scalper.backtest.refusals import BOT_REASONS, bot_refusal
from services.decision.risk import BotRules, Exposure, decide
from shared.messages import Signal
from shared.symbols import get_spec

GOLD = get_spec("XAUUSD")
NO_ID = uuid.UUID(int=0)
AT = datetime(2026, 4, 21, 10, 30, tzinfo=UTC)


@settings(max_examples=400, deadline=None)
@given(
    status=st.sampled_from(["active", "killed", "paused"]),
    auto_trade=st.booleans(),
    mode=st.sampled_from(["strategy", "fixed_pips", "bogus"]),
    min_score=st.floats(0.0, 1.0),
    score=st.floats(0.0, 1.0),
    max_concurrent=st.integers(0, 3),
    max_per_symbol=st.integers(0, 3),
    max_per_day=st.integers(0, 3),
    open_positions=st.integers(0, 4),
    trades_today=st.integers(0, 4),
    stop_far=st.booleans(),
)
def test_bot_refusal_is_decides_reason(status, auto_trade, mode, min_score, score, max_concurrent, max_per_symbol,
                                      max_per_day, open_positions, trades_today, stop_far):
    rules = dataclasses.replace(BotRules(), status=status, auto_trade=auto_trade, sl_tp_mode=mode, decision_min_score=min_score,
                                risk_max_concurrent_positions=max_concurrent, risk_max_per_symbol=max_per_symbol,
                                max_trades_per_day=max_per_day)
    stop = 1990.0 if not stop_far else 1000.0  # a far stop fails implausible_stops, a check after the seven
    signal = Signal(signal_id=NO_ID, message_id=NO_ID, produced_at=AT, bot_id=1, account_id=1, symbol="XAUUSD", timeframe="1m",
                    strategy="s", side="buy", bar_time=AT, entry=2000.0, stop=stop, target=2010.0, score=score, features={"atr": 2.0})
    exposure = Exposure(open_positions=open_positions, open_on_symbol=open_positions, trades_today=trades_today, margin_free=10_000.0)
    decision = decide(rules=rules, signal=signal, exposure=exposure, spec=GOLD)
    ours = bot_refusal(rules, status=status, score=score, open_positions=open_positions, open_on_symbol=open_positions,
                       trades_today=trades_today)
    if ours is None:
        assert decision.reason not in BOT_REASONS
    else:
        assert (decision.action, decision.reason) == ("ignore", ours)
