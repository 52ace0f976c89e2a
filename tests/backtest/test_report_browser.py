"""The backtest's HTML report in headless chromium: both charts draw from the inline plotly.js, the trade list pages
(100 a page) and sorts by a column."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from scalper.cli import app
from tests.browser_kit import Chromium

pytestmark = pytest.mark.slow


async def test_the_report_draws_its_charts_and_pages_and_sorts_its_trades(gold_file, tmp_path, chromium_available):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["backtest", str(gold_file), "--from", "2026-04-20", "--to", "2026-04-24", "--html", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    async with Chromium(tmp_path / "profile") as browser:
        await browser.open(out.as_uri())
        await browser.wait_for("!!document.querySelector('#curve .main-svg') && !!document.querySelector('#price .main-svg')")
        traces = await browser.evaluate("document.getElementById('price').data.map(t => t.name)")
        assert any(name.startswith("XAUUSD") for name in traces) and "exit" in traces
        trades = await browser.evaluate("JSON.parse(document.getElementById('data').textContent).trades.length")
        assert trades > 100, "need more than a page of trades"
        assert await browser.evaluate("document.querySelectorAll('#trades tbody tr').length") == 100
        await browser.evaluate("document.getElementById('next').click(); true")
        assert await browser.evaluate("document.querySelectorAll('#trades tbody tr').length") == min(100, trades - 100)
        await browser.evaluate("document.querySelector('#trades th[data-col=pnl]').click(); true")
        column = await browser.evaluate("Array.from(document.querySelectorAll('#trades tbody tr')).map(r => Number(r.cells[12].innerText))")
        assert column == sorted(column) and len(column) == 100  # back to page 1, smallest P&L first
