"""Pipeline metrics (Prometheus). Names the seed's users look for: signals_ingested_total, orders_placed_total,
decision_ignored_total{reason}; plus latency histograms per hop."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

signals_ingested_total = Counter("signals_ingested_total", "New signals stored by decision", ["strategy", "symbol"])
decisions_total = Counter("decisions_total", "Decisions made on new signals, by action (open, ignore) and strategy", ["action", "strategy"])
decision_ignored_total = Counter("decision_ignored_total", "Signals decided `ignore`, by reason", ["reason"])
orders_placed_total = Counter("orders_placed_total", "Orders sent to the broker, by outcome", ["status"])
fills_total = Counter("fills_total", "Orders filled by the broker", ["symbol"])
executor_state_conflicts_total = Counter(
    "executor_state_conflicts_total",
    "Clashes between what the broker reports and what the executor's tables hold (a reused ticket, a position row that "
    "is not the order's), logged as errors and never skipped in silence",
    ["kind"],
)
kill_switch_trips_total = Counter("kill_switch_trips_total", "Bots stopped by the daily-loss kill switch")
strategy_errors_total = Counter("strategy_errors_total", "Strategy evaluations that raised", ["strategy"])
dead_letters_total = Counter("dead_letters_total", "Messages dead-lettered", ["queue", "reason"])
unknown_fields_total = Counter("message_unknown_fields_total", "Fields ignored from a newer minor schema", ["type"])
bars_rejected_total = Counter("bars_rejected_total", "Bars refused by the feed validation", ["symbol", "reason"])
bars_repaired_total = Counter(
    "bars_repaired_total", "Bars the feed validation repaired, not refused (price_digits: prices rounded to the symbol's digits)",
    ["symbol", "reason"],
)
bar_windows_published_total = Counter("bar_windows_published_total", "BarWindows published by market data", ["symbol"])
scan_lines_total = Counter(
    "scan_lines_total", "Scan lines decision wrote, one per bot per scan (found: signal, at info; none, at debug)", ["found"],
)

publish_latency_seconds = Histogram("bus_publish_latency_seconds", "Time to publish (confirmed)", ["exchange"], buckets=LATENCY_BUCKETS)
consume_latency_seconds = Histogram("bus_handler_latency_seconds", "Handler run time", ["queue"], buckets=LATENCY_BUCKETS)
bar_to_signal_seconds = Histogram("bar_to_signal_latency_seconds", "BarWindow produced -> signal produced", buckets=LATENCY_BUCKETS)
signal_to_order_seconds = Histogram("signal_to_order_latency_seconds", "Signal produced -> order sent to the broker", buckets=LATENCY_BUCKETS)
scan_cycle_seconds = Histogram("scan_cycle_duration_seconds", "One market-data scan cycle", buckets=LATENCY_BUCKETS)

# Set by shared.telemetry.MetricsSampler from the tables and the bus every few seconds (no handler keeps them).
open_positions = Gauge("open_positions", "Open positions per bot", ["bot_id"])
bot_daily_pnl = Gauge("bot_daily_pnl", "Realised P&L of the positions closed since the day's start (UTC), per bot", ["bot_id"])
bot_equity = Gauge("bot_equity", "Equity of the bot's broker account (its latest snapshot)", ["bot_id", "account_id"])
bot_trades_closed = Gauge("bot_trades_closed", "Positions the bot has closed (all time)", ["bot_id"])
bot_win_rate = Gauge("bot_win_rate", "Share of the bot's closed positions with a positive P&L (0 before the first)", ["bot_id"])
bot_killed = Gauge("bot_killed", "1 while the bot is stopped by the kill switch (status killed)", ["bot_id"])
broker_connected = Gauge("broker_connected", "1 while every broker session of this executor answers healthy")
feed_stale = Gauge("feed_stale", "1 while a symbol's feed is stale and its scan paused", ["symbol"])
queue_depth = Gauge("bus_queue_depth", "Messages ready in a queue", ["queue"])


def prime(*, queues: tuple[str, ...] | list[str] = (), strategies: tuple[str, ...] | list[str] = ()) -> None:
    """Create the labelled series that exist before their first event at 0, so dashboards and alerts read 0, not "no data"."""
    for status in ("filled", "rejected", "failed", "expired"):
        orders_placed_total.labels(status=status)
    for queue in queues:
        for reason in ("invalid", "delivery_limit"):
            dead_letters_total.labels(queue=queue, reason=reason)
    for name in strategies:
        strategy_errors_total.labels(strategy=name)
