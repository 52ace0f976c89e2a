"""The price-sanity rule on the shipped M1 files: at the default limit no bar is refused (and the margin is known);
a copy of a file poisoned with a 1e308 bar and a 10x high loses exactly those rows, with their reasons."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from scalper.cli import app
from shared.loaders import load_m1
from shared.sanity import check_bars, outlier_ratios
from shared.settings import Settings
from shared.symbols import get_spec

DEFAULT = Settings.model_fields["bar_sanity_atr"].default
# The largest ratio of a bar's range or move to its ATR limit seen in each file (measured: gold 14.08 on
# 2026-04-07 04:00, EURUSD 19.31 on 2018-06-12 03:01); the default 25 keeps a margin of 1.3x over the worst.
MAX_SEEN = {"gold": 14.1, "eurusd": 19.4}


@pytest.mark.parametrize("which", ["gold", "eurusd"])
def test_no_bar_of_the_shipped_files_is_refused_at_the_default(which, request):
    path = request.getfixturevalue("gold_file" if which == "gold" else "eurusd_file")
    load = load_m1(path)
    assert load.rejected == []
    bars = load.bars
    checked = check_bars(bars, max_atr=DEFAULT, digits=get_spec("XAUUSD" if which == "gold" else "EURUSD").digits)
    assert checked.rejected == [] and checked.repaired == [] and checked.bars is bars
    range_ratio, jump_ratio = outlier_ratios(bars.high, bars.low, bars.close, bars.time)
    worst = max(float(range_ratio.max()), float(jump_ratio.max()))
    assert worst < MAX_SEEN[which] < DEFAULT, worst


def poisoned_copy(src, dst, rows: dict[int, str]) -> None:
    lines = src.read_text().splitlines()
    for n, kind in rows.items():  # n: the 1-based line number
        parts = lines[n - 1].split(",")
        if kind == "1e308":
            parts[1:5] = ["1e308"] * 4
        else:
            parts[2] = repr(float(parts[4]) * 10)
        lines[n - 1] = ",".join(parts)
    dst.write_text("\n".join(lines) + "\n")


def test_a_poisoned_file_loses_exactly_its_absurd_rows(gold_file, tmp_path):
    path = tmp_path / "XAUUSD_M1.csv"
    poisoned_copy(gold_file, path, {5000: "1e308", 5001: "1e308", 20000: "high_x10", 40001: "high_x10"})
    load = load_m1(path)
    assert load.rejected == [(5000, "jump_outlier"), (5001, "jump_outlier"), (20000, "range_outlier"), (40001, "range_outlier")]
    clean = load_m1(gold_file).bars
    keep = np.ones(len(clean), bool)
    keep[[5000 - 2, 5001 - 2, 20000 - 2, 40001 - 2]] = False  # line n is bar n - 2 (the header is line 1)
    assert np.array_equal(load.bars.time, clean.time[keep]) and np.array_equal(load.bars.high, clean.high[keep])

    result = CliRunner().invoke(app, ["data", "check", str(path), "--json"])
    assert result.exit_code in (0, 1), result.output
    assert "range_outlier" in result.output and "jump_outlier" in result.output
