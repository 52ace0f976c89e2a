"""The seed's scan line: once per bot per scan, with the window's new signals, decisions to open and orders."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from decision_helpers import T0, add_bot, delivery, make_settings, make_signal
from structlog.testing import capture_logs

from services.decision.service import DecisionService
from shared.bus.base import TransientError
from shared.messages import BotScan, ScanReport
from shared.timeutil import ManualClock

STRATEGIES = ("price_action_pinbar", "trend_pullback", "doji_breakout", "range_reversion")


def scan_lines(logs) -> list[dict]:
    return [entry for entry in logs if entry["event"].startswith("[ScalperTrade]")]


def service_for(bus, db, **settings) -> DecisionService:
    return DecisionService(bus=bus, sessions=db, clock=ManualClock(T0), settings=make_settings(**settings), lookback_for=lambda c: 100)


async def test_scan_line_counts_the_windows_new_signals_decisions_and_orders(db, bus, user, account):
    bot = await add_bot(db, user, account, risk_max_per_symbol=1, risk_max_concurrent_positions=5)
    quiet = await add_bot(db, user, account, symbol="EURUSDm")
    service = service_for(bus, db)
    earlier, window = uuid.uuid4(), uuid.uuid4()
    old = make_signal(bot, strategy="doji_breakout", bar_time=T0 - timedelta(minutes=1), window_id=earlier)
    await service.handle_signal(old)  # opens, and holds the bot's one slot on XAUUSD
    rescanned = old.model_copy(update={"window_id": window, "message_id": uuid.uuid4()})
    a = make_signal(bot, strategy="price_action_pinbar", window_id=window, score=0.9)
    b = make_signal(bot, strategy="trend_pullback", window_id=window, score=0.1)
    for sig in (rescanned, a, b):
        await service.handle_signal(sig)
    report = ScanReport(
        window_id=window,
        symbol="XAUUSD",
        timeframe="1m",
        bar_time=T0,
        bots=(
            BotScan(bot_id=bot.id, strategies=STRATEGIES, signal_ids=(rescanned.signal_id, a.signal_id, b.signal_id)),
            BotScan(bot_id=quiet.id, strategies=STRATEGIES[:2], signal_ids=()),
            BotScan(bot_id=quiet.id + 100, strategies=STRATEGIES, signal_ids=()),  # deleted since the scan
        ),
    )
    with capture_logs() as logs:
        await service.on_signals_queue(report, delivery(report))
    first, second = scan_lines(logs)
    # a: max_per_symbol (old holds the slot); b: score below min; the re-scan is not new in this window.
    assert first["event"] == f"[ScalperTrade] bot={bot.id} symbol=XAUUSDm strategies=4 signals=2 decisions=0 orders=0"
    assert first["log_level"] == "info"
    assert {k: first[k] for k in ("bot", "symbol", "strategies", "signals", "decisions", "orders")} == {
        "bot": bot.id,
        "symbol": "XAUUSDm",
        "strategies": 4,
        "signals": 2,
        "decisions": 0,
        "orders": 0,
    }
    assert second["event"] == f"[ScalperTrade] bot={quiet.id} symbol=EURUSDm strategies=2 signals=0 decisions=0 orders=0"


async def test_scan_line_with_an_order(db, bus, user, account):
    bot = await add_bot(db, user, account)
    service = service_for(bus, db)
    window = uuid.uuid4()
    a = make_signal(bot, strategy="price_action_pinbar", window_id=window)
    b = make_signal(bot, strategy="trend_pullback", window_id=window)
    for sig in (a, b):
        await service.handle_signal(sig)
    report = ScanReport(
        window_id=window,
        symbol="XAUUSD",
        timeframe="1m",
        bar_time=T0,
        bots=(BotScan(bot_id=bot.id, strategies=STRATEGIES, signal_ids=(a.signal_id, b.signal_id)),),
    )
    with capture_logs() as logs:
        await service.handle_scan_report(report, delivery(report))
        await service.handle_scan_report(report, delivery(report, count=2))  # redelivered: no second line
    [line] = scan_lines(logs)
    assert line["event"] == f"[ScalperTrade] bot={bot.id} symbol=XAUUSDm strategies=4 signals=2 decisions=1 orders=1"


async def test_report_before_its_signals_is_redelivered_then_logged_at_the_limit(db, bus, user, account):
    bot = await add_bot(db, user, account)
    service = service_for(bus, db, delivery_limit=3)
    window = uuid.uuid4()
    late = make_signal(bot, window_id=window)
    report = ScanReport(
        window_id=window,
        symbol="XAUUSD",
        timeframe="1m",
        bar_time=T0,
        bots=(BotScan(bot_id=bot.id, strategies=STRATEGIES, signal_ids=(late.signal_id,)),),
    )
    with capture_logs() as logs:
        with pytest.raises(TransientError):
            await service.handle_scan_report(report, delivery(report, count=1))
        with pytest.raises(TransientError):
            await service.handle_scan_report(report, delivery(report, count=2))
        assert scan_lines(logs) == []
        await service.handle_signal(late)
        await service.handle_scan_report(report, delivery(report, count=3))
    [line] = scan_lines(logs)
    assert line["signals"] == 1 and line["orders"] == 1


async def test_last_delivery_logs_what_it_has(db, bus, user, account):
    bot = await add_bot(db, user, account)
    service = service_for(bus, db, delivery_limit=3)
    report = ScanReport(
        window_id=uuid.uuid4(),
        symbol="XAUUSD",
        timeframe="1m",
        bar_time=T0,
        bots=(BotScan(bot_id=bot.id, strategies=STRATEGIES, signal_ids=(uuid.uuid4(),)),),
    )
    with capture_logs() as logs:
        await service.handle_scan_report(report, delivery(report, count=3))
    [line] = scan_lines(logs)
    assert line["signals"] == 0
    assert any(e["event"] == "scan line logged with signals still undecided" and e["log_level"] == "warning" for e in logs)


async def test_scan_line_of_signals_decided_here_needs_no_query_and_matches_the_tables(db, bus, user, account, monkeypatch):
    """Decided in this process and known to the plan: the lines come from memory, and say what the tables say."""
    from services.decision import service as service_module
    from services.decision.scanline import scan_lines as lines_from_tables

    bot = await add_bot(db, user, account, risk_max_per_symbol=1, risk_max_concurrent_positions=5)
    quiet = await add_bot(db, user, account, symbol="EURUSDm")
    service = service_for(bus, db)
    await service.refresh_plan()
    earlier, window = uuid.uuid4(), uuid.uuid4()
    old = make_signal(bot, strategy="doji_breakout", bar_time=T0 - timedelta(minutes=1), window_id=earlier)
    rescanned = old.model_copy(update={"window_id": window, "message_id": uuid.uuid4()})
    a = make_signal(bot, strategy="price_action_pinbar", window_id=window, score=0.9)
    b = make_signal(bot, strategy="trend_pullback", window_id=window, score=0.1)
    for sig in (old, rescanned, a, b):
        await service.handle_signal(sig)
    report = ScanReport(
        window_id=window, symbol="XAUUSD", timeframe="1m", bar_time=T0,
        bots=(
            BotScan(bot_id=bot.id, strategies=STRATEGIES, signal_ids=(rescanned.signal_id, a.signal_id, b.signal_id)),
            BotScan(bot_id=quiet.id, strategies=STRATEGIES[:2], signal_ids=()),
        ),
    )

    async def no_query(**_):
        raise AssertionError("the scan line queried the tables")

    monkeypatch.setattr(service_module, "scan_lines", no_query)
    with capture_logs() as logs:
        await service.on_signals_queue(report, delivery(report))
    async with db() as session:
        expected = [line.text() for line in await lines_from_tables(session=session, report=report)]
    assert [line["event"] for line in scan_lines(logs)] == expected
    assert expected[0] == f"[ScalperTrade] bot={bot.id} symbol=XAUUSDm strategies=4 signals=2 decisions=0 orders=0"

    # The window's tally gone (a backlog longer than the tallies kept): the tables answer, with the same lines.
    monkeypatch.undo()
    service._tallies.clear()
    service._logged.clear()
    with capture_logs() as logs:
        await service.on_signals_queue(report, delivery(report))
    assert [line["event"] for line in scan_lines(logs)] == expected

    # A signal this process did not decide (another process, or before a restart): the tables answer.
    stranger = make_signal(quiet, strategy="trend_pullback", window_id=window)
    other = ScanReport(window_id=window, symbol="EURUSD", timeframe="1m", bar_time=T0,
                       bots=(BotScan(bot_id=quiet.id, strategies=STRATEGIES[:2], signal_ids=(stranger.signal_id,)),))
    with pytest.raises(TransientError):  # undecided, so the report waits for it, as before
        await service.on_signals_queue(other, delivery(other))


def test_a_scan_lines_log_fields_are_every_field_but_the_undecided_ids():
    import dataclasses

    from services.decision.scanline import ScanLine

    line = ScanLine(bot=7, symbol="XAUUSDm", strategies=4, signals=2, decisions=1, orders=1, undecided=("a",))
    wanted = {f.name: getattr(line, f.name) for f in dataclasses.fields(ScanLine) if f.name != "undecided"}
    assert line.fields() == wanted
