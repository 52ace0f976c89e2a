"""Secrets never leave through the logger: masked before any renderer, tracebacks without locals, JSON stacks as text,
and a log stream that does not drain never holds up the event loop."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets as std_secrets
import threading
import time

import pytest

from shared.logging import REDACTED, OffLoopStreamHandler, configure_logging, get_logger, mask_text

API_KEY = std_secrets.token_urlsafe(32)  # as services/decision/users.py makes them
SCAN_LINE = "[ScalperTrade] bot=1 symbol=XAUUSDm strategies=4 signals=2 decisions=1 orders=1"


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _fail_with_the_key_in_a_local():
    api_key = API_KEY  # noqa: F841  a local value, as Starlette's frames hold the request's headers
    headers = [(b"x-api-key", API_KEY.encode())]  # noqa: F841
    raise RuntimeError("the route failed")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secret_fields_and_keys_inside_strings_are_masked(fmt, restore_logging, capsys):
    configure_logging(fmt, "INFO")
    log = get_logger("test.redaction")
    log.info("request", api_key=API_KEY, password="s3cret-pw", password_ref="s3cret-pw", token="tok-value-123",
             headers={"X-API-Key": API_KEY, "Authorization": "Bearer abc.def.ghi"}, password_set=True)
    log.info(f"caller sent {API_KEY} over amqp://scalper:rabbit-pw@localhost:5672/ with password=s3cret-pw")
    log.info(SCAN_LINE, bot=1, symbol="XAUUSDm", strategies=4, signals=2, decisions=1, orders=1)
    err = capsys.readouterr().err
    for secret in (API_KEY, "s3cret-pw", "tok-value-123", "abc.def.ghi", "rabbit-pw"):
        assert secret not in err, (secret, err)
    assert err.count(REDACTED) >= 7
    assert SCAN_LINE in err  # the line users grep for reads as before
    if fmt == "json":
        first = json.loads(err.splitlines()[0])
        assert first["password_set"] is True and first["api_key"] == REDACTED
        assert first["headers"] == {"X-API-Key": REDACTED, "Authorization": REDACTED}
    else:
        assert "password_set=True" in err


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_traceback_shows_no_local_values_and_json_carries_it_as_text(fmt, restore_logging, capsys):
    configure_logging(fmt, "INFO")
    try:
        _fail_with_the_key_in_a_local()
    except RuntimeError:
        logging.getLogger("uvicorn.error").exception("Exception in ASGI application\n")  # as uvicorn logs a 500
        get_logger("test.redaction").exception("handler failed")
    err = capsys.readouterr().err
    assert API_KEY not in err and API_KEY[10:30] not in err
    assert "<traceback object>" not in err
    assert err.count("Traceback (most recent call last)") == 2
    assert "_fail_with_the_key_in_a_local" in err and "RuntimeError: the route failed" in err
    if fmt == "json":
        records = [json.loads(line) for line in err.splitlines()]
        assert len(records) == 2  # one line each: the stack inside the JSON string
        for record in records:
            assert isinstance(record["exception"], str) and "RuntimeError: the route failed" in record["exception"]
            assert "exc_info" not in record
        assert records[0]["event"] == "Exception in ASGI application"


def test_the_scan_line_is_left_as_it_is():
    assert mask_text(SCAN_LINE) == SCAN_LINE
    long_name = "test_a_broker_ticket_the_tables_hold_closed"  # 43 characters, snake_case: a name, not a key
    assert mask_text(f"in {long_name}") == f"in {long_name}"
    assert mask_text(f"key {API_KEY}.") == f"key {REDACTED}."


async def test_a_stream_that_does_not_drain_never_holds_up_the_event_loop():
    read_fd, write_fd = os.pipe()  # nobody reads yet: the pipe's 64 KiB fill, then every write blocks
    stream = os.fdopen(write_fd, "w", encoding="utf-8")
    handler = OffLoopStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"test.offloop.{id(handler)}")
    logger.propagate, logger.level = False, logging.INFO
    logger.addHandler(handler)
    lines = [f"{n:05d} " + "x" * 2000 for n in range(1000)]  # 2 MB
    try:
        started = time.monotonic()
        for line in lines:
            logger.info(line)
            await asyncio.sleep(0)
        assert time.monotonic() - started < 1.0, "the loop waited for the log stream"

        received = bytearray()

        def drain():
            while received.count(b"\n") < len(lines):
                received.extend(os.read(read_fd, 1 << 16))

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        await asyncio.to_thread(reader.join, 10)
        assert received.decode().splitlines() == lines  # everything, in order
    finally:
        logger.removeHandler(handler)
        handler.close()
        stream.close()
        os.close(read_fd)


async def test_lines_past_the_bound_are_dropped_and_counted_never_waited_for():
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "w", encoding="utf-8")
    handler = OffLoopStreamHandler(stream, max_pending=10)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"test.offloop.{id(handler)}")
    logger.propagate, logger.level = False, logging.INFO
    logger.addHandler(handler)
    try:
        started = time.monotonic()
        for n in range(200):
            logger.info("%05d %s", n, "y" * 4000)  # 800 KB: the pipe fills, then the bound
        assert time.monotonic() - started < 1.0
        received = bytearray()

        def drain():
            while b"lines dropped" not in received:
                received.extend(os.read(read_fd, 1 << 16))

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        await asyncio.to_thread(reader.join, 10)
        assert b"log lines dropped: the log stream did not keep up" in received
    finally:
        logger.removeHandler(handler)
        handler.close()
        stream.close()
        os.close(read_fd)
