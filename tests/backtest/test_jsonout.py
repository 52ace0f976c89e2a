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
