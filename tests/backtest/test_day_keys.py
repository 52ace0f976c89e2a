"""The backtester's broker-day keys (scalper/backtest/signals.day_keys) are shared.levels.trading_day_start of each bar:
the vectorised us_dst and fixed-offset paths against the definition, hour by hour across DST switches and weekends."""

from __future__ import annotations

import numpy as np
import pytest

from scalper.backtest.signals import day_keys, day_keys_by_hour

START_2018 = 1_514_764_800


@pytest.mark.parametrize("rule", ["us_dst", "utc", "+2", "-5", "3"])
def test_day_keys_equal_trading_day_start(rule):
    rng = np.random.default_rng(2)
    hourly = np.arange(START_2018, START_2018 + 2 * 366 * 86_400, 3600, dtype=np.int64)  # every hour of 2018-2019
    later = np.sort(rng.integers(START_2018, START_2018 + 10 * 366 * 86_400, 4_000))  # and a sample up to 2027
    for times in (np.sort(np.concatenate([hourly, hourly[::5] + 59 * 60])), later):
        assert np.array_equal(day_keys(times, rule), day_keys_by_hour(times, rule))
