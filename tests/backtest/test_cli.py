"""`scalper backtest` end to end on the real gold file and on every format: JSON shape, HTML report, options, errors."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from scalper.cli import app
from shared.loaders import load_m1
from shared.stats import STAT_KEYS
from shared.strategies import catalog


def invoke(*args):
    return CliRunner().invoke(app, ["backtest", *map(str, args)])


def test_json_and_html_on_a_week_of_gold(gold_file, tmp_path):
    out_json, out_html = tmp_path / "bt.json", tmp_path / "bt.html"
    result = invoke(gold_file, "--from", "2026-04-20", "--to", "2026-04-24", "--json", out_json, "--html", out_html,
                    "--commission-per-lot", 7, "--quiet")
    assert result.exit_code == 0, result.output
    doc = json.loads(out_json.read_text())
    assert set(doc["total"]) == set(STAT_KEYS)
    assert set(doc["by_strategy"]) == set(catalog.names("scalper"))
    assert doc["run"]["from"].startswith("2026-04-20") and doc["run"]["to"].startswith("2026-04-24")
    assert doc["total"]["trades"] == len(doc["trades"]) > 0
    assert all("2026-04-20" <= t["opened_at"][:10] <= "2026-04-24" for t in doc["trades"])
    assert all(t["commission"] == pytest.approx(0.07) for t in doc["trades"])  # 0.01 lot x 7
    report = doc["report"]
    assert {"return_pct", "max_drawdown_pct", "sharpe", "sortino", "exposure_pct", "avg_hold_minutes", "longest_win_streak",
            "longest_loss_streak", "exit_reasons", "monthly", "by_strategy", "by_symbol"} <= set(report)
    assert sum(report["exit_reasons"].values()) == doc["total"]["trades"] == report["by_symbol"]["XAUUSD"]["trades"]
    assert report["final_balance"] == doc["run"]["final_balance"]
    html = out_html.read_text()
    assert html.startswith("<!doctype html>") and "Equity and drawdown" in html and 'id="price"' in html
    assert "Backtest XAUUSD · scalper · 2026-04-20 to 2026-04-24" in html  # a title a person reads, no raw ISO time
    ours = re.sub(r'<script id="plotly-js">.*?</script>', "", html, flags=re.S)  # plotly.js inline, as the package ships it
    assert "{'" not in ours.split("<script")[0]  # the run table shows no dict repr
    assert len(ours) < len(html) and re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", ours) is None  # no external assets
    assert "total" in result.output
    for name in [*catalog.names("scalper"), *STAT_KEYS]:  # piped, the table is printed whole: no name cut short
        assert name in result.output, name
    assert "…" not in result.output


def test_json_to_stdout_and_strategy_choice(gold_file):
    result = invoke(gold_file, "--from", "2026-05-04", "--to", "2026-05-05", "--strategies", "price_action_pinbar", "--json", "-", "--quiet")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout[result.stdout.index("{"):])
    assert list(doc["by_strategy"]) == ["price_action_pinbar"]


def test_errors_say_why(gold_file, tmp_path):
    assert "unknown strategy" in invoke(gold_file, "--strategies", "nope").output
    assert "unknown engine" in invoke(gold_file, "--engine", "x").output
    bad = tmp_path / "x.csv"
    bad.write_text("x,y\n1,2\n")
    assert invoke(bad, "--symbol", "XAUUSD").exit_code == 2
    assert "pass --symbol" in invoke(gold_file.parent / "EURUSD_M1.tsv", "--symbol", "NOPE").output


def test_harami_engine(gold_file):
    if not catalog.names("harami"):
        out = invoke(gold_file, "--engine", "harami")
        assert out.exit_code == 2 and "harami engine has no strategy" in out.output
        return
    out = invoke(gold_file, "--engine", "harami", "--from", "2026-04-20", "--to", "2026-04-24", "--json", "-", "--quiet")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout[out.stdout.index("{"):])
    assert doc["run"]["engine"] == "harami" and list(doc["by_strategy"]) == catalog.names("harami")


def test_a_file_without_spreads_backtests_like_the_same_bars_in_memory(gold_file, tmp_path):
    """A week of gold written as MT4 history (no spread column, `--spread-points 12`) trades exactly as the same bars
    with a 12-point spread given to the engine directly."""
    import dataclasses

    import numpy as np

    from scalper.backtest.engine import BacktestConfig, run_backtest
    from scalper.backtest.report import to_json
    from shared.messages import StrategyConfig
    from shared.symbols import get_spec

    bars = load_m1(gold_file).bars
    week = bars[int(np.searchsorted(bars.time, 1776643200)) :][: 5 * 1440]  # from Monday 2026-04-20
    mt4 = tmp_path / "XAUUSD_mt4.csv"
    mt4.write_text("".join(
        f"{t.strftime('%Y.%m.%d,%H:%M')},{o:.2f},{h:.2f},{lo:.2f},{c:.2f},{v}\n"
        for t, o, h, lo, c, v in zip(week.time.astype("datetime64[s]").tolist(), week.open, week.high, week.low, week.close, week.tick_volume)
    ))
    out = invoke(mt4, "--symbol", "XAUUSD", "--spread-points", 12, "--json", "-", "--quiet")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout[out.stdout.index("{"):])
    assert doc["run"]["format"] == "mt4_csv" and doc["run"]["bars"] == len(week)

    same = dataclasses.replace(week, spread=np.full(len(week), 12, np.int64))
    config = BacktestConfig(symbol="XAUUSD", strategies=tuple(StrategyConfig(name=n) for n in catalog.names("scalper")))
    expected = to_json(run_backtest(same, get_spec("XAUUSD"), config))
    assert doc["total"]["trades"] > 0
    assert (doc["total"], doc["trades"]) == (expected["total"], expected["trades"])


def test_json_document_text_is_the_documents_content(gold_file, tmp_path):
    """The --json text (scalper/backtest/jsonout.py: one trade a line) reads back to what json.dumps(indent=2) held."""
    from scalper.backtest.jsonout import dumps_document

    out = tmp_path / "bt.json"
    result = invoke(gold_file, "--from", "2026-04-20", "--to", "2026-04-22", "--json", out, "--quiet")
    assert result.exit_code == 0, result.output
    text = out.read_text()
    doc = json.loads(text)
    assert doc["trades"] and text.count("\n") > len(doc["trades"])  # one trade a line, the rest indented
    assert json.loads(dumps_document(doc)) == doc == json.loads(json.dumps(doc, indent=2))
    assert dumps_document({}) == "{}" and json.loads(dumps_document({"a": [], "b": {"c": [1, 2]}})) == {"a": [], "b": {"c": [1, 2]}}
