"""The dashboard's small texts say what the numbers mean: a gaining day is not a loss, an ignored decision has no
volume to show."""

from __future__ import annotations

from types import SimpleNamespace

from services.decision.dashboard.routes import templates


def _bots(loss_today_pct):
    bot = SimpleNamespace(id=1, name="b", symbol="XAUUSDm", status="active", status_reason=None, kill_switch_enabled=True,
                          tripped=False, kill_switch_limit_pct=3.0, loss_today_pct=loss_today_pct, auto_trade=True)
    return templates.get_template("_bots.html").render(data=SimpleNamespace(bots=[bot]))


def test_a_gaining_day_reads_as_no_loss_and_a_losing_one_as_a_loss():
    assert "no loss today (up 0.33%)" in _bots(-0.33) and "loss today -" not in _bots(-0.33)
    assert "loss today 1.2%" in _bots(1.2)
    assert "loss today" not in _bots(None)
