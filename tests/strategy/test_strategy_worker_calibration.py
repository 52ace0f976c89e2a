"""SCALPER_CALIBRATION in the strategy worker: every Signal of a calibrated strategy carries p_win and expected_r_net;
none without a model; an unreadable file stops the worker at start-up instead of silently dropping p_win."""

from __future__ import annotations

import json

import pytest

from shared.calibration import Calibration, CalibrationError, Model
from shared.settings import Settings
from shared.strategies.catalog import Catalog
from shared.timeutil import ManualClock
from tests.strategy.test_strategy_worker import NOW, FakeBus, counting_strategy, sub, window_of
from services.strategy.service import StrategyWorker


def _worker(path, calls) -> StrategyWorker:
    return StrategyWorker(bus=FakeBus(), settings=Settings(calibration=path), catalog=Catalog([counting_strategy(calls)]),
                          clock=ManualClock(NOW))


async def test_a_calibrated_worker_puts_p_win_on_every_signal(tmp_path):
    # p = sigmoid(0 + 1 x (score - 0.5) / 0.1): 0.5 at the counting strategy's score 0.5
    model = Model(("score",), (0.5,), (0.1,), (1.0,), 0.0)
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(Calibration({("counting", "XAUUSD"): model}, commission_per_lot=0.0).to_json()))
    worker = _worker(path, [])
    signals, _ = await worker.handle_window(window_of(sub(1, ("counting", {})), sub(2, ("counting", {"threshold": 0.7}))))
    assert [round(s.p_win, 6) for s in signals] == [0.5, round(1 / (1 + 2.718281828459045 ** -2), 6)]
    # stop 1.0, target 2.0: 2R; the window has no spreads, so gold's typical 12 points (0.12 = 0.12 R)
    assert signals[0].expected_r_net == pytest.approx(0.5 * 2 - 0.5 - 0.12)
    other = await _worker(path, []).handle_window(window_of(sub(1, ("counting", {})), symbol="EURUSD"))
    assert other[0][0].p_win is None and other[0][0].expected_r_net is None  # no model for EURUSD


def test_an_unreadable_calibration_stops_the_worker(tmp_path):
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({"format": "scalper.calibration", "version": 99, "models": []}))
    with pytest.raises(CalibrationError, match="version"):
        _worker(path, [])
    with pytest.raises(CalibrationError, match="cannot read"):
        _worker(tmp_path / "absent.json", [])


async def test_without_a_calibration_p_win_is_null():
    worker = StrategyWorker(bus=FakeBus(), settings=Settings(), catalog=Catalog([counting_strategy([])]), clock=ManualClock(NOW))
    signals, _ = await worker.handle_window(window_of(sub(1, ("counting", {}))))
    assert signals and all(s.p_win is None and s.expected_r_net is None for s in signals)
