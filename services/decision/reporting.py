"""What committed decisions report beyond this process's scan tallies: the decision metrics, each label looked up
once for the lot, and the decision log lines, built only when the logger would keep them."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from services.decision.decisions import SignalOutcome
from shared.logging import enabled as log_enabled
from shared.logging import get_logger
from shared.messages import Signal
from shared.metrics import decision_ignored_total, decisions_total, signals_ingested_total
from shared.symbols import canonical_symbol

LOG_NAME = "services.decision"
log = get_logger(LOG_NAME)

Decided = Sequence[tuple[Signal, SignalOutcome]]


def count(decided: Decided) -> None:
    ingested: dict[tuple[str, str], int] = {}
    actions: dict[tuple[str, str], int] = {}
    ignored: dict[str, int] = {}
    for signal, outcome in decided:
        if not outcome.bot_found:
            continue
        if outcome.signal_new:
            key = (signal.strategy, canonical_symbol(signal.symbol))
            ingested[key] = ingested.get(key, 0) + 1
        if outcome.decision_new:
            decision = outcome.decision
            key = (decision.action, signal.strategy)
            actions[key] = actions.get(key, 0) + 1
            if decision.action == "ignore":
                ignored[decision.reason] = ignored.get(decision.reason, 0) + 1
    for (strategy, symbol), n in ingested.items():
        signals_ingested_total.labels(strategy=strategy, symbol=symbol).inc(n)
    for (action, strategy), n in actions.items():
        decisions_total.labels(action=action, strategy=strategy).inc(n)
    for reason, n in ignored.items():
        decision_ignored_total.labels(reason=reason).inc(n)


def log_lines(decided: Decided) -> None:
    if not log_enabled(LOG_NAME, logging.INFO):
        return
    for signal, outcome in decided:
        if not outcome.bot_found:
            log.info("signal for an unknown bot ignored", signal_id=str(signal.signal_id), bot_id=signal.bot_id,
                     strategy=signal.strategy)
        elif outcome.decision_new:
            decision = outcome.decision
            log.info("decision", decision_id=decision.id, bot_id=decision.bot_id, signal_id=str(signal.signal_id),
                     strategy=signal.strategy, decision_action=decision.action, reason=decision.reason,
                     client_order_id=decision.client_order_id)
