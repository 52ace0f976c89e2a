"""The one way to build an executor: `scalper run`, `scalper serve executor` and the tests all call `build_executor`.

The accounts come from the tables (all active ones, or one), looked at again every scan interval, so an account
created or activated while the executor runs is served without a restart. Each account gets its broker from its
`broker` column: paper accounts share one quote book; an `mt5` account gets its own terminal session (the local
`MetaTrader5` module on Windows, the mt5linux bridge where SCALPER_MT5_HOST is set).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.executor.brokers.base import Broker
from services.executor.brokers.mt5 import broker_for_account
from services.executor.brokers.paper import PaperBroker, QuoteBook
from services.executor.leadership import Leadership, leadership_for
from services.executor.rules import PositionRules
from services.executor.service import ExecutorService
from shared.bus.base import Bus
from shared.db.models import BrokerAccount
from shared.db.patience import DatabasePatience, Patience
from shared.settings import Settings
from shared.timeutil import Clock, terminal_observer

BROKER_KINDS = ("paper", "mt5")


class AccountBrokers:
    """The active accounts of the tables (or the one asked for), and the broker session each is served by."""

    def __init__(
        self, *, sessions: async_sessionmaker[AsyncSession], settings: Settings, clock: Clock, account_id: int | None = None,
        mt5_connect: Callable[[], Any] | None = None,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._clock = clock
        self._account_id = account_id
        self._mt5_connect = mt5_connect
        self._quotes = QuoteBook()  # one feed prices every paper broker of this executor

    async def active_accounts(self) -> list[BrokerAccount]:
        query = select(BrokerAccount).where(BrokerAccount.is_active, BrokerAccount.broker.in_(BROKER_KINDS))
        if self._account_id is not None:
            query = query.where(BrokerAccount.id == self._account_id)
        async with self._sessions() as session:
            return list((await session.execute(query.order_by(BrokerAccount.id))).scalars())

    async def broker_for(self, account: BrokerAccount) -> Broker:
        if account.broker == "mt5":
            return broker_for_account(account, settings=self._settings, clock=self._clock, connect=self._mt5_connect)
        return PaperBroker(
            clock=self._clock, balance=self._settings.paper_balance, commission_per_lot=self._settings.paper_commission_per_lot,
            margin_mode=account.margin_mode, symbol_suffix=account.symbol_suffix or None, quotes=self._quotes,
        )


def build_executor(
    *,
    settings: Settings,
    bus: Bus,
    sessions: async_sessionmaker[AsyncSession],
    clock: Clock,
    instance: str = "ex-1",
    account_id: int | None = None,
    leadership: Leadership | None = None,
    patience: Patience | None = None,
    rules: PositionRules | None = None,
    mt5_connect: Callable[[], Any] | None = None,
) -> ExecutorService:
    """The executor of every active account (or of `account_id`), leading when no other process does (PostgreSQL's
    advisory lock; on SQLite it always leads) and waiting out database outages. A terminal clock follows the time the
    MT5 sessions report."""
    return ExecutorService(
        bus=bus,
        sessions=sessions,
        clock=clock,
        settings=settings,
        instance=instance,
        rules=rules,
        leadership=leadership or leadership_for(settings.database_url),
        patience=patience or DatabasePatience(),
        accounts=AccountBrokers(sessions=sessions, settings=settings, clock=clock, account_id=account_id, mt5_connect=mt5_connect),
        on_terminal_time=terminal_observer(clock),
    )
