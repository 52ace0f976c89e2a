"""What one executor process holds, shared by the plain-function modules beside it (orders, positions, commands,
events): the bus, the tables, the clock, each account's broker session and what is in flight between them.

The service shell (service.py) owns the lifecycle and the lock; every function that takes an `ExecutorState` runs with
that lock held, one at a time, so none of this needs a lock of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.executor.brokers.base import BarFedBroker, Broker, ClosedPosition, TerminalBroker
from services.executor.rules import PositionRules
from services.executor.trailing import ExitRule, TrailRule
from shared.bars import Bars
from shared.bus.base import Bus
from shared.messages import Message
from shared.settings import Settings
from shared.timeutil import Clock

# A close the broker made, with the accounts of its broker session (a ticket is unique within a session).
PendingClose = tuple[tuple[int, ...], ClosedPosition]


@dataclass
class ExecutorState:
    bus: Bus
    sessions: async_sessionmaker[AsyncSession]
    clock: Clock
    settings: Settings
    instance: str
    log: object  # a bound structlog logger
    trail_rule: TrailRule
    exit_rule: ExitRule
    account_ids: list[int] = field(default_factory=list)
    brokers: dict[int, Broker] = field(default_factory=dict)
    live: dict[int, TerminalBroker] = field(default_factory=dict)  # accounts whose broker has a terminal session (MT5)
    broker_groups: list[tuple[Broker, tuple[int, ...]]] = field(default_factory=list)
    session_accounts: dict[int, tuple[int, ...]] = field(default_factory=dict)  # the accounts sharing each one's session
    paper: list[tuple[BarFedBroker, tuple[int, ...]]] = field(default_factory=list)  # fed the bars, rebuilt from tables
    leading: bool = False
    pending_closes: list[PendingClose] = field(default_factory=list)
    outbox: list[tuple[str, Message]] = field(default_factory=list)  # events to publish, in order
    # Whether a closed position may still lack its published `closed` event (true at start: a crash may have left one).
    closes_to_publish: bool = True
    windows: dict[str, Bars] = field(default_factory=dict)  # latest closed bars per canonical symbol (paper: trail, ATR)
    stored_snapshots: dict[int, tuple[tuple[float, ...], float]] = field(default_factory=dict)

    @classmethod
    def create(cls, *, bus: Bus, sessions: async_sessionmaker[AsyncSession], clock: Clock, settings: Settings, instance: str,
               log: object, rules: PositionRules) -> ExecutorState:
        return cls(bus=bus, sessions=sessions, clock=clock, settings=settings, instance=instance, log=log,
                   trail_rule=rules.trail(), exit_rule=rules.exits())

    def add_brokers(self, brokers: Mapping[int, Broker]) -> None:
        """Serve these accounts too: the one place that tells a broker's capabilities from the protocols it states."""
        for account_id, b in brokers.items():
            if account_id not in self.brokers:
                self.account_ids.append(account_id)
            self.brokers[account_id] = b
            if isinstance(b, TerminalBroker):
                self.live[account_id] = b
        self._regroup()

    def remove_brokers(self, account_ids) -> None:
        """Serve these accounts no more (their session would not open)."""
        for account_id in account_ids:
            self.brokers.pop(account_id, None)
            self.live.pop(account_id, None)
        self.account_ids = [a for a in self.account_ids if a in self.brokers]
        self._regroup()

    def _regroup(self) -> None:
        groups: dict[int, tuple[Broker, list[int]]] = {}
        for account_id, b in self.brokers.items():
            groups.setdefault(id(b), (b, []))[1].append(account_id)
        self.broker_groups = [(b, tuple(ids)) for b, ids in groups.values()]
        self.session_accounts = {a: ids for _, ids in self.broker_groups for a in ids}
        self.paper = [(b, ids) for b, ids in self.broker_groups if isinstance(b, BarFedBroker)]

    def nets(self, account_id: int) -> bool:
        """Whether the account nets (one position per symbol, deals add to it) rather than hedges."""
        return self.brokers[account_id].margin_mode == "netting"
