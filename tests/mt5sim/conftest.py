"""Fixtures for the MT5 simulator tests: an initialised simulator on synthetic gold bars, hedging or netting."""

from __future__ import annotations

import pytest

from mt5sim import SimulatedMT5
from tests.mt5sim.simdata import make_sim


@pytest.fixture
def sim() -> SimulatedMT5:
    return make_sim()


@pytest.fixture
def netting() -> SimulatedMT5:
    return make_sim(margin_mode="netting")
