"""Fixtures of the strategy tests: the real M1 files as Bars and the previous broker day's levels of their days."""

from __future__ import annotations

from pathlib import Path

import pytest
from strategy_testkit import (
    previous_day_levels,
    read_mt5_export_tsv,
    read_mt5_rates_csv,
)

from shared.bars import Bars
from shared.messages import Levels


@pytest.fixture(scope="session")
def gold_bars(gold_file: Path) -> Bars:
    return read_mt5_rates_csv(gold_file)


@pytest.fixture(scope="session")
def eurusd_bars(eurusd_file: Path) -> Bars:
    return read_mt5_export_tsv(eurusd_file)


@pytest.fixture(scope="session")
def gold_levels(gold_bars: Bars) -> dict[int, Levels]:
    return previous_day_levels(gold_bars)
