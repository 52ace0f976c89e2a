"""Structured logging (structlog): readable lines in embedded mode, JSON in distributed mode.

Secrets never go through the logger: API keys are printed to the terminal by the command line only.
"""

from __future__ import annotations

import logging
import sys

import structlog
from opentelemetry import trace

_STANDARD_KEYS = frozenset({"event", "level", "logger", "timestamp"})


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


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,
    ]
    if fmt == "json":
        renderers = [structlog.processors.JSONRenderer()]
    else:
        renderers = [_drop_fields_spelled_in_text, structlog.dev.ConsoleRenderer(colors=False)]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,  # a logger made before configure_logging() must follow it too
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("scalper")
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=[
        structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderers]))
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "scalper"] + [handler]
    root.setLevel(level.upper())
    for noisy in ("aiormq", "aio_pika", "sqlalchemy.engine", "uvicorn.access", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
