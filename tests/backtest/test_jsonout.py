"""The `--json` document's timestamps: iso_utc is from_epoch(x).isoformat() for every whole second, at once."""

from __future__ import annotations

import numpy as np

from scalper.backtest.jsonout import iso_utc
from shared.timeutil import from_epoch


def test_iso_utc_is_from_epoch_isoformat():
    rng = np.random.default_rng(18)
    seconds = np.concatenate((rng.integers(-2_000_000_000, 4_200_000_000, 20_000),
                              [0, -1, 1, 59, 60, 86_399, 86_400, 951_782_400, 4_107_542_399, -62_135_596_800, 253_402_300_799]))
    assert iso_utc(seconds.tolist()) == [from_epoch(int(x)).isoformat() for x in seconds]
    assert iso_utc(seconds) == [from_epoch(int(x)).isoformat() for x in seconds]


def test_iso_utc_leaves_what_is_not_whole_seconds_to_from_epoch():
    assert iso_utc([1.5, 60.0]) == [from_epoch(1.5).isoformat(), from_epoch(60.0).isoformat()]
    assert iso_utc([]) == []


def _same(a, b) -> bool:
    """Equal as values and as JSON text (-0.0, an int against a float, None)."""
    import json

    return a == b and json.dumps(a) == json.dumps(b)


def test_rounded_is_round():
    from scalper.backtest.jsonout import rounded

    rng = np.random.default_rng(19)
    ties = [k / 2000 for k in range(-4001, 4002, 2)] + [2.675, 1.005, 0.125, 0.375, -0.125, 2.5e-5, 1e-7]
    values = (rng.normal(0, 3000, 20_000).tolist() + rng.normal(0, 1, 5_000).tolist() + ties
              + np.round(rng.uniform(-5000, 5000, 5_000), 3).tolist() + [np.round(x, 2) + 0.005 for x in rng.uniform(0, 5000, 5_000)]
              + [0.0, -0.0, -0.001, 1e300, -1e300, 2.0**52 + 0.5, float("inf"), float("-inf"), 5e-324])
    for digits in (0, 1, 2, 3, 4, 5, 6, 8):
        assert _same(rounded(values, digits), [round(v, digits) for v in values]), digits
    nan = rounded([float("nan"), 1.25], 1)
    assert nan[0] != nan[0] and nan[1] == round(1.25, 1)
    odd = [None, 3, True, np.float64(2.675), 1.5]
    assert _same(rounded(odd, 2), [None if v is None else round(v, 2) for v in odd])
    assert rounded([], 2) == []


def test_rows_break_where_each_item_would():
    import json

    from scalper.backtest.jsonout import _rows

    line = json.JSONEncoder(separators=(", ", ": ")).encode

    def each(items):
        return ",\n".join("    " + line(item) for item in items)

    cases = [
        [{"a": 1, "b": "x"}, {}, {"a": None}],
        [{"s": "}, {"}, {"s": "ok"}],  # the boundary text inside a string
        [{"n": [{"x": 1}, {"y": 2}]}, {"n": {"z": {}}}],  # nested objects
        [{"a": 1}],
        [1, {"a": 2}, "}, {"],
        [[{"a": 1}, {"b": 2}], {"c": 3}],
    ]
    for items in cases:
        assert _rows(items, line) == each(items), items


def test_trade_rows_are_each_trades_rounded_row():
    """trade_rows' columns give each trade's row as round() and from_epoch write it, key by key, in order."""
    import json

    from scalper.backtest.engine import Trade, trade_rows

    rng = np.random.default_rng(20)
    trades = []
    for i in range(3_000):
        t = Trade(strategy=f"s{i % 3}", side="buy" if i % 2 else "sell", score=float(rng.uniform(0, 1)), signal_index=i,
                  entry_index=i + 1, entry_price=round(float(rng.uniform(1000, 3000)), 2), sl=None, tp=2.5, initial_sl=None if i % 5 == 0 else 1.25,
                  volume=0.01, exit_price=2000.125, reason="tp", entry_time=1_775_001_600 + 60 * i, exit_time=1_775_001_660 + 60 * i,
                  pnl=float(rng.normal(0, 5)) if i % 7 else 0.125, commission=-0.0 if i % 11 == 0 else 0.07, swap=float(rng.normal(0, 0.1)),
                  pips=float(rng.normal(0, 30)), r_multiple=None if i % 4 == 0 else float(rng.normal(0, 1)))
        trades.append(t)

    def row(t):
        return {"strategy": t.strategy, "side": t.side, "score": round(t.score, 4), "opened_at": from_epoch(t.entry_time).isoformat(),
                "closed_at": from_epoch(t.exit_time).isoformat(), "entry": t.entry_price, "exit": t.exit_price, "sl": t.initial_sl,
                "tp": t.tp, "volume": t.volume, "reason": t.reason, "pnl": round(t.pnl, 2), "commission": round(t.commission, 2),
                "swap": round(t.swap, 2), "pips": round(t.pips, 2), "r_multiple": None if t.r_multiple is None else round(t.r_multiple, 4)}

    assert json.dumps(trade_rows(trades)) == json.dumps([row(t) for t in trades])
    assert json.dumps(trades[3].as_dict()) == json.dumps(row(trades[3]))
    assert trade_rows([]) == []
