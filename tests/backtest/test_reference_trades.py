"""The backtester trades as the recorded reference run did, to the cent (issue 18, item 2): every trade of both
shipped files, the year benchmark's trades by digest, and the same signal count, refusals and kill-switch days.
The fixture was recorded once before the array rewrite (tests/backtest/reference.py says how to re-record it)."""

from __future__ import annotations

import json

import pytest

from tests.backtest import reference


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(reference.FIXTURE.read_text())


def _same(got: dict, want: dict) -> None:
    if "rows" in want:
        for i, (a, b) in enumerate(zip(got["rows"], want["rows"], strict=False)):
            assert a == b, f"trade {i} differs: got {a}, recorded {b}"
    for key in ("trades", "pnl", "signals", "ignored", "kill_switch_days", "digest"):
        assert got[key] == want[key], f"{key}: got {got[key]}, recorded {want[key]}"


@pytest.mark.parametrize("which, name", [("gold", "XAUUSD_M1.csv"), ("eurusd", "EURUSD_M1.tsv")])
def test_shipped_files_trade_as_recorded(which, name, data_dir, recorded, tmp_path):
    path = data_dir / name
    assert path.is_file(), f"{path} is absent"
    _same(reference.summary(reference.run_cli(path, tmp_path / "out.json")), recorded[which])


def test_year_benchmark_trades_as_recorded(gold_file, recorded, tmp_path):
    got = reference.summary(reference.run_cli(reference.year_csv(gold_file, tmp_path), tmp_path / "out.json"))
    _same(got, recorded["year"])


def test_statistics_are_compute_stats_of_the_trades(gold_file):
    """The backtest's numpy statistics are the API's compute_stats over the same trades, to the last digit."""
    from scalper.backtest.engine import BacktestConfig, run_backtest
    from shared.loaders import load_m1
    from shared.messages import StrategyConfig
    from shared.stats import compute_stats
    from shared.strategies import catalog
    from shared.symbols import get_spec

    config = BacktestConfig(symbol="XAUUSD", strategies=tuple(StrategyConfig(name=n) for n in catalog.names("scalper")))
    result = run_backtest(load_m1(gold_file).bars, get_spec("XAUUSD"), config)
    assert len(result.trades) > 500
    assert result.stats == compute_stats(t.to_closed() for t in result.trades)
