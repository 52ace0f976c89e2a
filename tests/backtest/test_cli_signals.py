"""`scalper backtest --json` lists every signal, traded or not, with its first-touch outcome."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np

from scalper.calibrate.outcomes import first_touch
from shared.loaders import load_m1
from shared.timeutil import to_epoch
from tests.backtest.test_cli import invoke

KEYS = {"time", "strategy", "side", "entry", "sl", "tp", "score", "p_win", "expected_r_net", "outcome"}


def test_every_signal_is_written_with_its_outcome(gold_file, tmp_path):
    out = tmp_path / "bt.json"
    result = invoke(gold_file, "--from", "2026-04-20", "--to", "2026-04-24", "--json", out, "--quiet")
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    signals = doc["signals"]
    assert len(signals) == doc["run"]["signals"] > doc["total"]["trades"] > 0  # refused ones are listed too
    assert all(set(s) == KEYS for s in signals)
    assert {s["outcome"] for s in signals} <= {"tp", "sl", "open"} and {"tp", "sl"} <= {s["outcome"] for s in signals}
    assert all(s["p_win"] is None and s["expected_r_net"] is None for s in signals)  # no calibration loaded
    assert [s["time"] for s in signals] == sorted(s["time"] for s in signals)
    # Levels as gold is quoted (2 digits), not 4567.919999999999; the run says what gated it.
    assert all(round(s[k], 2) == s[k] for s in signals for k in ("entry", "sl", "tp") if s[k] is not None)
    assert doc["run"]["calibration"] is None and doc["run"]["calibration_in_sample"] is None
    assert doc["run"]["min_expected_r"] == 0.0 and doc["run"]["min_stop_spread_ratio"] == 3.0
    # Each label is the first touch on the file's bars, from the bar after the signal bar (a 1m signal's bar is its time).
    bars = load_m1(gold_file).bars
    ones = [s for s in signals if s["strategy"] != "harami"][:200]
    index = np.searchsorted(bars.time, [to_epoch(datetime.fromisoformat(s["time"])) for s in ones])
    got = first_touch(bars, bars.spread * 0.01, index=index, buy=np.array([s["side"] == "buy" for s in ones]),
                      stop=np.array([s["sl"] for s in ones]), target=np.array([s["tp"] for s in ones]))
    assert list(got.outcome) == [s["outcome"] for s in ones]
