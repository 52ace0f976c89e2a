"""The positions an executor watches: the monitor cycle (closes still pending, orders stuck in `sending`, the
position rules, account snapshots), the broker sync of a terminal that trades on its own (MT5), and the paper book
rebuilt from the tables after a restart or a take-over.
"""

from __future__ import annotations

import time
from datetime import timedelta

from services.executor import commands, events, orders, store, trailing
from services.executor.brokers.base import BrokerPosition
from services.executor.state import ExecutorState
from shared.bus import topology
from shared.db.engine import transaction
from shared.db.models import AccountSnapshotRow, Position
from shared.messages import AccountSnapshot
from shared.strategies.catalog import CATALOG
from shared.strategies.indicators import atr as atr_series
from shared.strategies.invalidation import invalid_now
from shared.symbols import SymbolSpec, canonical_symbol, get_spec

# The monitor settles only orders untouched this long: a younger one may be in flight in another executor process
# (a standby taking over); within this process the lock already keeps the monitor and the handlers apart.
STUCK_AFTER = timedelta(seconds=30)
# A snapshot row is stored when the account changed, or at least this often (wall clock: an accelerated demo runs
# the monitor many times a real second, and the table must not grow by rows that say nothing new).
SNAPSHOT_EVERY_S = 60.0


async def monitor_cycle(ex: ExecutorState) -> None:
    """One monitor cycle: record closes still pending, settle stuck orders, manage positions, snapshot accounts."""
    try:
        await events.flush_closes(ex)
        await orders.reconcile_unsettled(ex, touched_before=ex.clock.now() - STUCK_AFTER)
    except Exception as exc:  # noqa: BLE001  the snapshot below must still be taken
        ex.log.warning("monitor: recording closes or settling orders failed", error=repr(exc))
    for account_id in ex.account_ids:
        try:
            await manage_positions(ex, account_id=account_id)
            await take_snapshot(ex, account_id=account_id)
        except Exception as exc:  # noqa: BLE001  one account's failure does not stop the others
            ex.log.warning("monitor cycle failed", account_id=account_id, error=repr(exc))


async def feed_bars(ex: ExecutorState, symbol: str, bars) -> None:
    """Feed a closed-bar window to the paper brokers that need it and record the positions its stops and targets closed."""
    if len(bars):  # an empty window feeds no broker; closes still pending are recorded all the same
        newest = int(bars.time[-1])
        for paper, account_ids in ex.paper:
            if not paper.wants_bars(symbol, newest):
                continue  # no position on the symbol, and its quote is this window's already (a shared book)
            for closed in await paper.on_bars(symbol, bars):
                ex.pending_closes.append((account_ids, closed))
    await events.flush_closes(ex)


async def manage_positions(ex: ExecutorState, *, account_id: int) -> None:
    """The position rules, each cycle: match the broker (closes it made, positions opened outside the engine), the
    time stop, then the trailing stop (trailing.py: pure, shared with the backtester)."""
    await sync_broker(ex, account_id=account_id)
    async with ex.sessions() as session:
        rows = [r for r in await store.open_positions(session=session, account_ids=[account_id]) if not r.external]
    now = ex.clock.now()
    expired = [r for r in rows if trailing.time_stop_hit(opened_at=r.opened_at, now=now, rule=ex.exit_rule)]
    if expired:
        ex.log.info("time stop: closing", account_id=account_id, tickets=[r.ticket for r in expired])
        await commands.close_positions(ex, account_id=account_id, rows=expired, reason="early_exit")
    invalid = await invalidated(ex, account_id=account_id, rows=[r for r in rows if r not in expired])
    if invalid:
        ex.log.info("strategy invalidation: closing", account_id=account_id, tickets=[r.ticket for r in invalid])
        await commands.close_positions(ex, account_id=account_id, rows=invalid, reason="early_exit")
        expired = expired + invalid
    if ex.trail_rule.mode == "off":
        return
    for row in rows:
        if row in expired:
            continue
        try:
            market = await market_of(ex, account_id=account_id, symbol=row.symbol)
            if market is None:
                continue
            bid, ask, spec, atr = market
            new_sl = trailing.trailing_stop(side=row.side, open_price=row.open_price, sl=row.sl, bid=bid, ask=ask, spec=spec,
                                            rule=ex.trail_rule, atr=atr)  # type: ignore[arg-type]
            if new_sl is not None:
                ex.log.info("trailing stop", ticket=row.ticket, sl_from=row.sl, sl_to=new_sl)
                await commands.move_stop(ex, row=row, sl=new_sl)
        except Exception as exc:  # noqa: BLE001  one position's failure does not stop the others
            ex.log.warning("trailing stop failed", ticket=row.ticket, error=repr(exc))


async def invalidated(ex: ExecutorState, *, account_id: int, rows: list[Position]) -> list[Position]:
    """The positions whose strategy's setup is invalid at the close of the newest closed bar (ExitRule.invalidation;
    shared/strategies/invalidation.py, the rule the backtester applies too)."""
    if not ex.exit_rule.invalidation or not rows:
        return []
    async with ex.sessions() as session:
        exits = await store.invalidations(session=session, client_order_ids=[r.client_order_id for r in rows])
    out = []
    for row in rows:
        rule = exits.get(row.client_order_id or "")
        if rule is None:
            continue
        try:
            strategy, params, features = rule["strategy"], rule.get("params") or {}, rule.get("features") or {}
            live = ex.live.get(account_id)
            if live is not None:
                bars = await live.rates(row.symbol, CATALOG.lookback(strategy, params))
                spec = await live.spec(row.symbol)
            else:
                bars, spec = ex.windows.get(canonical_symbol(row.symbol)), get_spec(row.symbol)
            if bars is None:
                continue
            opened_bar = int(row.opened_at.timestamp()) // 60 * 60
            if invalid_now(strategy, bars, params=params, features=features, spec=spec, opened_bar=opened_bar):
                out.append(row)
        except Exception as exc:  # noqa: BLE001  one position's failure does not stop the others
            ex.log.warning("strategy invalidation check failed", ticket=row.ticket, error=repr(exc))
    return out


async def market_of(ex: ExecutorState, *, account_id: int, symbol: str) -> tuple[float, float, SymbolSpec, float | None] | None:
    """(bid, ask, spec, ATR or None) for the trailing stop: the broker's quote (MT5), or the latest closed bar (paper)."""
    live = ex.live.get(account_id)
    want_atr = ex.trail_rule.mode == "atr"
    period = ex.trail_rule.atr_period
    if live is not None:
        prices = await live.quote(symbol)
        if prices is None:
            return None
        spec = await live.spec(symbol)
        bars = await live.rates(symbol, period * 4 + 1) if want_atr else None
        bid, ask = prices
    else:
        bars = ex.windows.get(canonical_symbol(symbol))
        if bars is None or len(bars) == 0:
            return None
        spec = get_spec(symbol)
        bid = float(bars.close[-1])
        ask = spec.round_price(bid + int(bars.spread[-1]) * spec.point)
    atr = None
    if want_atr and bars is not None and len(bars) > period:
        atr = float(atr_series(bars.high, bars.low, bars.close, period)[-1])
    return bid, ask, spec, atr


async def sync_broker(ex: ExecutorState, *, account_id: int) -> None:
    """Match the table with a broker that trades on its own (MT5): record the closes it made (stops, targets, a person)
    and report positions opened outside the engine, as `external`, without ever touching them."""
    broker = ex.live.get(account_id)
    if broker is None or not ex.leading:
        return  # the paper broker reports its closes itself (on_bars) and knows no other trader; a standby waits
    live = {p.ticket: p for p in await broker.positions()}
    accounts = ex.session_accounts[account_id]
    async with ex.sessions() as session:
        rows = await store.open_positions(session=session, account_ids=[account_id])
        known = await store.position_tickets(session=session, account_ids=accounts)
        ours = await store.existing_client_order_ids(session=session, client_order_ids=[p.comment for p in live.values()])
    gone = []
    for row in rows:
        if row.ticket in live:
            continue
        closed = await broker.find_close(row.ticket, "manual")
        if closed is None:
            gone.append(row)
        else:
            ex.pending_closes.append((accounts, closed))
    if gone:
        await commands.close_unknown(ex, account_id=account_id, rows=gone, reason="manual")
    strangers = [p for t, p in live.items() if t not in known and p.comment not in ours]
    if strangers:
        async with transaction(ex.sessions) as session:
            for p in strangers:
                session.add(Position(ticket=p.ticket, account_id=account_id, bot_id=None, client_order_id=None, symbol=p.symbol,
                                     side=p.side, volume=p.volume, open_price=p.open_price, sl=p.sl, tp=p.tp,
                                     opened_at=p.opened_at, external=True))
        for p in strangers:
            ex.log.warning("position opened outside the engine: reported, never touched", account_id=account_id,
                              ticket=p.ticket, symbol=p.symbol, side=p.side, volume=p.volume, magic=p.magic, comment=p.comment)
            async with ex.sessions() as session:
                row = await store.get_position(session=session, account_ids=[account_id], ticket=p.ticket)
            events.enqueue(ex, topology.position_key(account_id), store.position_event(row, kind="opened", at=row.opened_at))
        await events.drain(ex)
    await events.flush_closes(ex)


async def take_snapshot(ex: ExecutorState, *, account_id: int) -> None:
    info = await ex.brokers[account_id].account()
    now = ex.clock.now()
    values = (info.balance, info.equity, info.margin, info.margin_free)
    stored = ex.stored_snapshots.get(account_id)
    wall = time.monotonic()
    if stored is None or stored[0] != values or wall - stored[1] >= SNAPSHOT_EVERY_S:
        async with transaction(ex.sessions) as session:
            session.add(
                AccountSnapshotRow(
                    account_id=account_id,
                    balance=info.balance,
                    equity=info.equity,
                    margin=info.margin,
                    margin_free=info.margin_free,
                    taken_at=now,
                )
            )
        ex.stored_snapshots[account_id] = (values, wall)
    snapshot = AccountSnapshot(
        account_id=account_id,
        balance=info.balance,
        equity=info.equity,
        margin=info.margin,
        margin_free=info.margin_free,
        taken_at=now,
        specs=tuple(ex.live[account_id].specs()) if account_id in ex.live else (),
    )
    events.enqueue(ex, topology.account_key(account_id), snapshot)
    await events.drain(ex)


async def restore_paper_brokers(ex: ExecutorState, *, account_ids: set[int]) -> None:
    """After a restart or a take-over, give an empty paper broker of these accounts the open positions, the balance
    and the ticket count the tables remember (tickets go on past every one ever issued, so none is reused)."""
    for paper, group in ex.paper:
        if not account_ids.intersection(group) or await paper.positions():
            continue  # this process's own book: it is the truth, and its ticket count is its own
        async with ex.sessions() as session:
            rows = await store.open_positions(session=session, account_ids=group)
            magics = await store.magic_by_client_order_id(session=session, client_order_ids=[r.client_order_id for r in rows])
            realised = await store.realised_pnl(session=session, account_ids=group)
            issued = await store.highest_ticket(session=session, account_ids=group)
        paper.restore(
            [
                BrokerPosition(
                    ticket=r.ticket,
                    symbol=r.symbol,
                    side=r.side,  # type: ignore[arg-type]
                    volume=r.volume,
                    open_price=r.open_price,
                    sl=r.sl,
                    tp=r.tp,
                    opened_at=r.opened_at,
                    magic=magics.get(r.client_order_id or "", 0),
                    comment=r.client_order_id or "",
                )
                for r in rows
            ],
            balance=paper.initial_balance + realised,
            issued_through=issued,
        )
        if rows or realised or issued:
            ex.log.info("paper broker restored", accounts=list(group), positions=len(rows), realised_pnl=realised,
                           tickets_issued_through=issued)
