"""Strategies stated over a whole history at once, as arrays, for the backtester (issue 18): what `evaluate` would
answer on every bar's live window, where that is proved, and the bars where it is not.

The live `evaluate` stays the one definition. A function here returns, for the judged bars [first, end):
- `index` and the match's values (side, entry, stop, target, score, features) for the bars the arrays decide match;
- `unsure`: the bars the arrays cannot decide; the backtester runs `evaluate` on their windows;
every other bar is a proved no-match.

Why a full-history indicator may stand in for the window's: EMA and Wilder's smoothing are linear recursions, so the
window's value differs from the full history's only by its seed's error times the decay since the seed:
    EMA(n):  |seed_w - E[w+n-1]| * (1 - 2/(n+1)) ** (p - (n-1))   (seed_w: the mean of the window's first n closes)
    ATR(n):  |seed_w - A[w+n]| * ((n-1)/n) ** (p - n)               (seed_w: the mean of the window's true ranges 1..n)
at window position p (w: the window's first bar), plus float rounding (ROUNDING below). Each bar gets that bound;
a comparison whose two sides are nearer than it is not decided here (the bar is unsure), and a bar whose score the
bound cannot hold within SCORE_REL is unsure too. Everything else in a strategy is the same float arithmetic on the
same bar values as `evaluate`, element by element, so it is bit-identical.
"""

from __future__ import annotations

from typing import Any

from shared.strategies.over_history.bounds import ROUNDING, SCORE_REL, HistorySignals, OverHistory

__all__ = ["ROUNDING", "SCORE_REL", "HistorySignals", "OverHistory", "for_strategy"]


def for_strategy(strategy: Any, params: Any = None) -> OverHistory | None:
    """The array form of a catalog strategy for these parameters, when it has one: keyed by its `evaluate`, so a
    strategy whose evaluate is another function (a test's, a fork's) never gets arrays that are not its own."""
    from shared.strategies import doji_breakout, harami, pinbar, trend_pullback
    from shared.strategies.over_history import doji_breakout as doji_over
    from shared.strategies.over_history import harami as harami_over
    from shared.strategies.over_history import pinbar as pinbar_over
    from shared.strategies.over_history import trend_pullback as trend_over

    evaluate = getattr(strategy, "evaluate", None)
    if evaluate is trend_pullback.evaluate:
        return trend_over.over_history
    if evaluate is pinbar.evaluate:
        return pinbar_over.over_history
    if evaluate is doji_breakout.evaluate and doji_over.covers(params):
        return doji_over.over_history
    if evaluate is harami.evaluate:
        return harami_over.over_history
    return None
