"""The scan line reads exactly as the seed's in text mode and carries the same fields in JSON mode."""

from __future__ import annotations

import json
import logging

import pytest

from shared.logging import configure_logging, get_logger

LINE = "[ScalperTrade] bot=1 symbol=XAUUSDm strategies=4 signals=2 decisions=1 orders=1"
FIELDS = {"bot": 1, "symbol": "XAUUSDm", "strategies": 4, "signals": 2, "decisions": 1, "orders": 1}


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _emit(fmt: str, capsys) -> str:
    configure_logging(fmt, "INFO")
    get_logger("test.scanline").info(LINE, **FIELDS, extra_field="kept")
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_text_mode_prints_the_seed_line_once(restore_logging, capsys):
    out = _emit("text", capsys)
    assert LINE in out
    assert out.count("orders=1") == 1, out
    assert "extra_field=kept" in out


def test_json_mode_carries_every_field(restore_logging, capsys):
    record = json.loads(_emit("json", capsys))
    assert record["event"] == LINE
    assert {k: record[k] for k in FIELDS} == FIELDS
    assert record["extra_field"] == "kept"


def test_enabled_says_whether_a_line_would_get_past_the_level_filter(restore_logging):
    """A hot path skips building lines the logger would drop, and only those: below the level with configure_logging's
    processors; every line where the processors keep them all (capture_logs)."""
    from structlog.testing import capture_logs

    from shared.logging import enabled

    configure_logging("text", "WARNING")
    assert not enabled("test.enabled", logging.INFO)
    assert enabled("test.enabled", logging.WARNING)
    with capture_logs() as logs:
        assert enabled("test.enabled", logging.DEBUG)
        get_logger("test.enabled").debug("kept")
    assert [line["event"] for line in logs] == ["kept"]
    configure_logging("text", "DEBUG")
    assert enabled("test.enabled", logging.DEBUG)
