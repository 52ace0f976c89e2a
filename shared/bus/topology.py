"""Exchanges, routing keys and queues of architecture.md's bus topology, in one place for both back ends."""

from __future__ import annotations

from shared.bus.base import ExchangeType, QueueSpec
from shared.symbols import routing_name

MARKET_BARS = "market.bars"
STRATEGY_SIGNALS = "strategy.signals"
EXECUTION_ORDERS = "execution.orders"
EXECUTION_COMMANDS = "execution.commands"
EXECUTION_EVENTS = "execution.events"
RATES = "rates"
CONTROL_PLAN = "control.plan"
DEAD_LETTERS = "dead.letters"

EXCHANGES: dict[str, ExchangeType] = {
    MARKET_BARS: "topic",
    STRATEGY_SIGNALS: "topic",
    EXECUTION_ORDERS: "direct",
    EXECUTION_COMMANDS: "direct",
    EXECUTION_EVENTS: "topic",
    RATES: "direct",
    CONTROL_PLAN: "fanout",
    DEAD_LETTERS: "fanout",
}


def bars_key(timeframe: str, symbol: str) -> str:
    return f"bars.{timeframe}.{routing_name(symbol)}"


def signals_key(symbol: str) -> str:
    return f"signals.{routing_name(symbol)}"


def scan_report_key(symbol: str) -> str:
    return f"scan.{routing_name(symbol)}"


def report_key(account_id: int) -> str:
    return f"report.{account_id}"


def position_key(account_id: int) -> str:
    return f"position.{account_id}"


def account_key(account_id: int) -> str:
    return f"account.{account_id}"


STRATEGY_BARS = QueueSpec("strategy.bars", bindings=((MARKET_BARS, "bars.#"),))
DECISION_SIGNALS = QueueSpec("decision.signals", bindings=((STRATEGY_SIGNALS, "signals.#"), (STRATEGY_SIGNALS, "scan.#")))
DECISION_EVENTS = QueueSpec(
    "decision.events",
    bindings=((EXECUTION_EVENTS, "report.*"), (EXECUTION_EVENTS, "position.*"), (EXECUTION_EVENTS, "account.*")),
)
DEAD_LETTER_QUEUE = QueueSpec("dead.letters", bindings=((DEAD_LETTERS, ""),))


def executor_orders_queue(account_id: int) -> QueueSpec:
    return QueueSpec(f"executor.{account_id}", bindings=((EXECUTION_ORDERS, str(account_id)),), single_active_consumer=True)


def executor_commands_queue(account_id: int) -> QueueSpec:
    return QueueSpec(
        f"executor.{account_id}.commands", bindings=((EXECUTION_COMMANDS, str(account_id)),), single_active_consumer=True
    )


def executor_bars_queue(instance: str) -> QueueSpec:
    """The paper broker's private view of the bars (it fills and finds stop hits on them)."""
    return QueueSpec(f"executor.bars.{instance}", bindings=((MARKET_BARS, "bars.1m.#"),), exclusive=True)


def plan_queue(instance: str) -> QueueSpec:
    return QueueSpec(f"control.plan.{instance}", bindings=((CONTROL_PLAN, ""),), exclusive=True)
