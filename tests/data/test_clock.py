"""The broker's clock, inferred: the shipped files' bars in true UTC, written in broker time (fixed +2, fixed +3, us_dst
and UTC itself) across a US DST switch, read back to the same UTC bars with the rule recovered; a file too short to
tell reads as UTC with a warning; a flag overrides the inference."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from scalper.cli import app
from shared.loaders import load_m1, wall_to_utc
from shared.loaders.clock import infer_clock, us_dst_offset
from tests.data.test_corpus import write_corpus

WEEK_S = 7 * 86_400
RULES = ("utc", "+2", "+3", "us_dst")


def _utc_source(path, weeks: int):
    """The file's own bars (broker time, us_dst) moved by whole weeks so that they span a US DST switch, in true UTC."""
    wall = load_m1(path, server_time="utc").bars
    wall = dataclasses.replace(wall, time=wall.time + weeks * WEEK_S)
    return dataclasses.replace(wall, time=wall_to_utc("us_dst", wall.time))


def _in_broker_time(bars, rule: str):
    offsets = us_dst_offset(bars.time) if rule == "us_dst" else (0 if rule == "utc" else int(rule) * 3600)
    return dataclasses.replace(bars, time=bars.time + offsets)


@pytest.fixture(scope="module")
def gold_utc(gold_file):
    return _utc_source(gold_file, -3)  # 2026-03-03 .. 2026-05-07: the March switch (8 March) inside


@pytest.fixture(scope="module")
def eurusd_utc(eurusd_file):
    return _utc_source(eurusd_file, 22)  # 2018-11-02 .. 2018-11-30: the November switch (4 November) inside


def _same_bars(result, bars):
    assert result.rejected == [] and result.rows == len(bars)
    for k in ("time", "open", "high", "low", "close", "tick_volume"):
        assert np.array_equal(getattr(result.bars, k), getattr(bars, k)), k


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(("source", "dialect", "least"), [("gold_utc", "rates_csv", 0.9), ("eurusd_utc", "mt5_export", 0.75)])
def test_the_rule_is_recovered_and_the_bars_are_the_utc_source(tmp_path, request, source, dialect, least, rule):
    truth = request.getfixturevalue(source)
    path = write_corpus(tmp_path / f"{rule}.txt", _in_broker_time(truth, rule), dialect)
    result = load_m1(path)
    assert (result.zone, result.server_time, result.suggestion) == (rule, rule, None)
    assert result.server_time_confidence >= least, result.warnings
    assert any(f"inferred as {rule}" in w for w in result.warnings)
    _same_bars(result, truth)


def test_a_file_too_short_to_tell_reads_as_utc_with_a_warning_and_a_suggestion(tmp_path, gold_utc):
    wall = _in_broker_time(gold_utc, "us_dst")
    tuesday = int(np.flatnonzero((wall.time // 86_400 + 3) % 7 == 1)[0])  # the first Tuesday bar (epoch day 0: Thursday)
    two_days = wall[tuesday: tuesday + 2 * 1_380]  # two days from Tuesday afternoon: two daily breaks, no weekend
    result = load_m1(write_corpus(tmp_path / "short.csv", two_days, "rates_csv"))
    assert result.zone == "utc" and result.server_time_confidence < 0.6
    assert any("clock cannot be told" in w and "times read as UTC" in w for w in result.warnings), result.warnings
    assert result.suggestion == "--server-time us_dst"
    assert np.array_equal(result.bars.time, two_days.time)  # read as UTC, as said


def test_no_session_end_at_all_is_zero_confidence(tmp_path, gold_utc):
    guess = infer_clock(gold_utc.time[:300])  # five hours without a break
    assert (guess.rule, guess.confidence, guess.weekly, guess.daily) == ("utc", 0.0, 0, 0)


def test_a_flag_overrides_the_inference_and_the_suggestion_names_the_rule_seen(tmp_path, gold_utc):
    path = write_corpus(tmp_path / "p3.csv", _in_broker_time(gold_utc, "+3"), "rates_csv")
    told = load_m1(path, utc_offset_hours=2)
    assert told.zone == "+2" and told.server_time_confidence == 1.0 and told.suggestion == "--utc-offset 3"
    assert np.array_equal(told.bars.time, gold_utc.time + 3600)  # read as told: one hour off
    agreeing = load_m1(path, server_time="+3")
    assert agreeing.suggestion is None
    _same_bars(agreeing, gold_utc)


def test_data_check_json_and_backtest_say_the_rule(tmp_path, gold_utc):
    path = write_corpus(tmp_path / "XAUUSD_p3.csv", _in_broker_time(gold_utc[:20_000], "+3"), "rates_csv")
    out = CliRunner().invoke(app, ["data", "check", str(path), "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["server_time"] == "+3" and doc["server_time_confidence"] >= 0.8 and doc["suggestion"] is None
    out = CliRunner().invoke(app, ["data", "check", str(path), "--json", "--server-time", "us_dst"])
    doc = json.loads(out.output)
    assert (doc["server_time"], doc["server_time_confidence"], doc["suggestion"]) == ("us_dst", 1.0, "--utc-offset 3")
    report = tmp_path / "r.json"
    back = CliRunner().invoke(app, ["backtest", str(path), "--quiet", "--json", str(report)])
    assert back.exit_code == 0, back.output
    data = json.loads(report.read_text())["run"]
    assert (data["server_time"], data["server_time_source"]) == ("+3", "inferred") and data["server_time_confidence"] >= 0.8
    assert "server time +3 (inferred" in back.output


def test_the_replay_feed_reads_the_clock_the_same_way(tmp_path, gold_utc):
    from scalper.embedded import make_feed

    path = write_corpus(tmp_path / "XAUUSD_p2.csv", _in_broker_time(gold_utc[:20_000], "+2"), "rates_csv")
    inferred = make_feed(f"replay:{path}")
    assert inferred.server_time == "+2" and np.array_equal(inferred.load.bars.time, gold_utc.time[:20_000])
    told = make_feed(f"replay:{path}", file_time="utc")
    assert told.server_time == "utc" and told.load.suggestion == "--utc-offset 2"
    assert make_feed(f"replay:{path}", tz="Etc/GMT-2").load.zone == "tz:Etc/GMT-2"
