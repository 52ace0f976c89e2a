"""Structured logging (structlog): readable lines in embedded mode, JSON in distributed mode.

Secrets never leave through the logger (docs/security.md): every record, structlog's and the standard library's (uvicorn's
"Exception in ASGI application"), passes `redact_secrets` before any renderer; tracebacks are rendered as plain text
without local values, and a JSON line carries its stack in `exception`; the event loop never waits for the terminal or
the pipe (`OffLoopStreamHandler`). API keys are printed to the terminal by the command line only.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import logging
import re
import sys
import threading
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, TextIO

import structlog
from opentelemetry import trace

_STANDARD_KEYS = frozenset({"event", "level", "logger", "timestamp"})

REDACTED = "[redacted]"

# Field names whose values are never printed (compared lower-case, `-` read as `_`: `X-API-Key` is `x_api_key`).
SECRET_FIELDS = frozenset({
    "api_key", "x_api_key", "apikey", "password", "password_ref", "passwd", "secret", "secret_key", "token",
    "service_token", "access_token", "refresh_token", "authorization", "proxy_authorization", "cookie", "set_cookie",
})
_SECRET_SUFFIXES = ("_password", "_secret", "_secret_key", "_token", "_api_key")

# Our API keys: secrets.token_urlsafe(32) (services/decision/users.py), 43 characters of the URL-safe alphabet. A
# snake_case name of that length (a long test or function name in a traceback) is left alone; a key is all lower
# case, digits and `_` with a chance of about 6e-11.
_API_KEY_RE = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
_SNAKE_RE = re.compile(r"[a-z_][a-z0-9_]*\Z")
# `password=...`, `"api_key": "..."`, `X-API-Key: ...`, `Authorization: Bearer ...` inside a text.
_ASSIGNED_RE = re.compile(
    r"(?i)(?<![a-z0-9])((?:[a-z0-9]+[_-])*(?:x-api-key|api[_-]?key|password(?:_ref)?|passwd|secret(?:_key)?|token|authorization))"
    r"(['\"]?\s*[=:]\s*['\"]?)((?:bearer|basic)\s+)?([^\s'\",;&)}\]]+)"
)
_ASSIGNED_HINT_RE = re.compile(r"(?i)key|pass|secret|token|auth")
# The password of a URL's user info: amqp://user:PASSWORD@host.
_URL_PASSWORD_RE = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)([^@\s/]+)@")


def is_secret_field(name: object) -> bool:
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    return isinstance(name, str) and _is_secret_name(name)


@lru_cache(maxsize=4096)
def _is_secret_name(name: str) -> bool:
    key = name.strip().lower().replace("-", "_")
    return key in SECRET_FIELDS or key.endswith(_SECRET_SUFFIXES)


def _mask_key(match: re.Match) -> str:
    return match.group(0) if _SNAKE_RE.match(match.group(0)) else REDACTED


def _mask_assigned(match: re.Match) -> str:
    if match.group(4).startswith(REDACTED[:-1]):
        return match.group(0)  # masked already (the final line passes again what the processors masked)
    return f"{match.group(1)}{match.group(2)}{match.group(3) or ''}{REDACTED}"


def mask_text(text: str) -> str:
    """`text` with anything that looks like an API key, a `password=...` or a URL's password replaced by [redacted]."""
    if len(text) < 8:
        return text
    if "://" in text:
        text = _URL_PASSWORD_RE.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    if _ASSIGNED_HINT_RE.search(text):  # the full pattern only where a secret's name appears: most lines have none
        text = _ASSIGNED_RE.sub(_mask_assigned, text)
    return _API_KEY_RE.sub(_mask_key, text) if len(text) >= 43 else text


def _redact(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return mask_text(value)
    if depth > 4:
        return value
    if isinstance(value, Mapping):
        return {k: (REDACTED if is_secret_field(k) and v is not None else _redact(v, depth + 1)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        # A header pair as ASGI keeps it: (b"x-api-key", b"...").
        if len(value) == 2 and isinstance(value[0], str | bytes) and is_secret_field(value[0]):
            return type(value)((value[0], REDACTED))
        return type(value)(_redact(v, depth + 1) for v in value)
    if isinstance(value, bytes):
        return mask_text(value.decode("utf-8", "replace")) if len(value) >= 8 else value
    return value


def redact_secrets(_logger, _name, event_dict: dict) -> dict:
    """Mask the values of secret fields (SECRET_FIELDS) and secrets spelled inside strings, nested values included."""
    if event_dict.get("_from_structlog"):
        # In the formatter, after `redact_secrets` ran where the line was logged: only the traceback's text is new.
        for key in ("exception", "stack"):
            if isinstance(event_dict.get(key), str):
                event_dict[key] = mask_text(event_dict[key])
        return event_dict
    for key, value in event_dict.items():
        if value is None or key.startswith("_") or key in ("exc_info", "stack_info"):
            continue  # `_record` and `_from_structlog` are the formatter's own; a traceback is masked once rendered
        if is_secret_field(key):
            event_dict[key] = REDACTED
        elif isinstance(value, str | bytes | Mapping | list | tuple):
            event_dict[key] = _redact(value)
    return event_dict


def _strip_message(_logger, _name, event_dict: dict) -> dict:
    """A standard-library message's trailing newline (uvicorn's "Exception in ASGI application\n") is not kept."""
    if isinstance(event_dict.get("event"), str):
        event_dict["event"] = event_dict["event"].rstrip()
    return event_dict


def add_trace_ids(_logger, _name, event_dict: dict) -> dict:
    """Add the active span's `trace_id` and `span_id` (hex, as trace stores show them) when a span is active."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event_dict.setdefault("span_id", format(ctx.span_id, "016x"))
    return event_dict


def _drop_fields_spelled_in_text(_logger, _name, event_dict: dict) -> dict:
    """Text mode: a field the message already reads as `key=value` is not repeated after it (the scan line)."""
    event = str(event_dict.get("event", ""))
    for key in [k for k in event_dict if k not in _STANDARD_KEYS]:
        if f"{key}={event_dict[key]}" in event:
            del event_dict[key]
    return event_dict


# Plain text, no local values: rich's traceback with locals printed the caller's X-API-Key and held the event loop
# for 4-9 s on one HTTP 500 (10 s for three at once, 8.5 MB of log).
format_exception = structlog.processors.ExceptionRenderer()


class OffLoopStreamHandler(logging.Handler):
    """Write formatted records to a stream without ever making an event loop wait for it.

    The record is formatted where it is logged (cheap now: no locals, plain tracebacks), so the context it needs
    (contextvars, the active span) is the caller's. The write happens on a writer thread when the caller runs an event
    loop and the stream is a file descriptor (a terminal, a pipe, a file: any of them can block); elsewhere it is
    written at once, after whatever is queued. At most `max_pending` lines wait; past that lines are dropped and
    counted, and the count is written when the stream drains."""

    def __init__(self, stream: TextIO, *, max_pending: int = 10_000) -> None:
        super().__init__()
        self.stream = stream
        self.max_pending = max_pending
        self.dropped = 0
        self.lost = 0  # lines the stream refused (closed, broken): nowhere left to say so but this count
        self._pending: collections.deque[str] = collections.deque()
        self._wake = threading.Event()
        self._io = threading.Lock()
        self._closed = False
        self._thread: threading.Thread | None = None
        try:
            stream.fileno()
            self._blocking_stream = True
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
            self._blocking_stream = False  # an in-memory stream (pytest's capsys) cannot block

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = mask_text(self.format(record)) + "\n"
        except Exception:  # noqa: BLE001  logging must not raise into the caller
            self.handleError(record)
            return
        if self._blocking_stream and not self._closed and _on_event_loop():
            if len(self._pending) >= self.max_pending:
                self.dropped += 1
                return
            self._pending.append(line)
            self._start_writer()
            self._wake.set()
            return
        with self._io:
            self._write_pending()
            self._write(line)

    def flush(self) -> None:
        """Write every queued line now (from a thread that may block: not the event loop's)."""
        with self._io:
            self._write_pending()

    def close(self) -> None:
        self._closed = True
        self.flush()
        self._wake.set()
        super().close()

    def _start_writer(self) -> None:
        if self._thread is None:
            with self._io:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run_writer, name="scalper-log-writer", daemon=True)
                    self._thread.start()

    def _run_writer(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            with self._io:
                self._write_pending()

    def _write_pending(self) -> None:
        while self._pending:
            self._write(self._pending.popleft())
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            self._write(f"[logging] {dropped} log lines dropped: the log stream did not keep up\n")

    def _write(self, line: str) -> None:
        try:
            self.stream.write(line)
            self.stream.flush()
        except Exception:  # noqa: BLE001  a closed or broken stream loses the line, never the caller
            self.lost += 1  # counted: the logger cannot log its own stream's failure on that stream


def _on_event_loop() -> bool:
    return asyncio._get_running_loop() is not None


def _flush_at_exit() -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, OffLoopStreamHandler):
            handler.flush()


atexit.register(_flush_at_exit)


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,
        redact_secrets,  # before wrap_for_formatter too: other handlers (pytest's caplog) see the event dict itself
    ]
    if fmt == "json":
        renderers = [structlog.processors.JSONRenderer()]
    else:
        renderers = [_drop_fields_spelled_in_text,
                     structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)]
    structlog.configure(
        # A line below its logger's level is dropped first, before the processors mask and stamp it for nothing.
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,  # a logger made before configure_logging() must follow it too
    )
    handler = OffLoopStreamHandler(sys.stderr)
    handler.set_name("scalper")
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(foreign_pre_chain=[_strip_message, *shared], processors=[
        format_exception,  # exc_info -> `exception`, plain text: in JSON the stack as a string, not `<traceback object>`
        redact_secrets,  # the stack's text and the foreign records' messages, before any renderer
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
        *renderers]))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "scalper"]:
        old.close()  # writes what it still holds
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "scalper"] + [handler]
    root.setLevel(level.upper())
    for noisy in ("aiormq", "aio_pika", "sqlalchemy.engine", "uvicorn.access", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)


def enabled(name: str, level: int) -> bool:
    """Whether a line at `level` from logger `name` gets past the first processor: False only when that processor is
    `filter_by_level` (configure_logging's) and the standard logger is below `level`, where the line would be dropped
    before anything reads it. A hot path asks once, and skips building lines nobody sees; where the processors are
    others (structlog.testing.capture_logs), every line is kept, as it would have been."""
    processors = structlog.get_config()["processors"]
    if not processors or processors[0] is not structlog.stdlib.filter_by_level:
        return True
    return logging.getLogger(name).isEnabledFor(level)
