"""The log a person can follow: a scan line at info only when its scan found a signal (debug otherwise), one
summary line a minute per symbol, and fills and closes that say bot, symbol, side, volume and price."""

from __future__ import annotations

from structlog.testing import capture_logs

from services.decision.scanline import ScanLine, ScanLog
from shared.logging import get_logger


class Ticks:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _line(bot: int, symbol: str, signals: int = 0, decisions: int = 0, orders: int = 0) -> ScanLine:
    return ScanLine(bot=bot, symbol=symbol, strategies=4, signals=signals, decisions=decisions, orders=orders)


def test_quiet_scans_go_to_debug_and_a_summary_line_comes_once_a_minute():
    now = Ticks()
    scan_log = ScanLog(get_logger("test.scan"), now=now)
    with capture_logs() as logs:
        for second in range(0, 60, 10):
            now.t = float(second)
            scan_log.line(_line(1, "XAUUSDm"))
            scan_log.line(_line(2, "EURUSDm", signals=1 if second == 30 else 0, decisions=1 if second == 30 else 0,
                                orders=1 if second == 30 else 0))
        now.t = 61.0
        scan_log.line(_line(1, "XAUUSDm", signals=2, decisions=1, orders=1))
    lines = [e for e in logs if e["event"].startswith("[ScalperTrade]")]
    assert len(lines) == 13
    loud = [e for e in lines if e["log_level"] == "info"]
    assert [e["event"] for e in loud] == [
        "[ScalperTrade] bot=2 symbol=EURUSDm strategies=4 signals=1 decisions=1 orders=1",
        "[ScalperTrade] bot=1 symbol=XAUUSDm strategies=4 signals=2 decisions=1 orders=1",
    ]
    assert all(e["log_level"] == "debug" for e in lines if e not in loud)
    (summary,) = [e for e in logs if e["event"].startswith("[ScalperSummary]")]
    assert summary["log_level"] == "info"
    assert summary["event"] == (
        "[ScalperSummary] last 61s: scans=13 signals=3 decisions=2 orders=2"
        " | EURUSDm scans=6 signals=1 decisions=1 orders=1 | XAUUSDm scans=7 signals=2 decisions=1 orders=1"
    )
    assert summary["per_symbol"]["XAUUSDm"] == {"scans": 7, "signals": 2, "decisions": 1, "orders": 1}
    # the next minute starts from nothing
    with capture_logs() as later:
        now.t = 80.0
        scan_log.line(_line(1, "XAUUSDm"))
    assert not [e for e in later if e["event"].startswith("[ScalperSummary]")]


def test_every_scan_line_is_counted_whatever_its_level():
    from shared.metrics import scan_lines_total

    def count(found: str) -> float:
        return scan_lines_total.labels(found=found)._value.get()

    before = count("signal"), count("none")
    scan_log = ScanLog(get_logger("test.scan"), now=Ticks())
    scan_log.line(_line(1, "XAUUSDm"))
    scan_log.line(_line(1, "XAUUSDm"))
    scan_log.line(_line(1, "XAUUSDm", signals=1))
    assert (count("signal") - before[0], count("none") - before[1]) == (1, 2)
