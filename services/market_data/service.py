"""The market-data service: keeps the latest ScanPlan, runs the scan clock, and publishes a BarWindow per planned symbol.

Each scan fetches the closed bars of every planned symbol from the feed, refuses bad bars (shared.sanity: counted
and logged; prices rounded to the symbol's digits are counted as repaired), attaches the previous broker day's levels, and publishes only what changed. A symbol whose feed stops while the
market is open is paused (no orders on old prices) until bars return.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from services.market_data.feeds.base import BAR_SECONDS, Feed, PlanFollower
from shared import symbols
from shared.bars import Bars
from shared.bus import topology
from shared.bus.base import Bus, Consumer, Delivery
from shared.levels import previous_day_levels, trading_day_start
from shared.logging import get_logger
from shared.messages import BarColumns, BarWindow, InvalidMessage, Levels, Message, PlanSymbol, ScanPlan
from shared.metrics import bar_windows_published_total, bars_rejected_total, bars_repaired_total, feed_stale, scan_cycle_seconds
from shared.sanity import BAR_REASONS, WARMUP, BarCheck, check_bars
from shared.settings import Settings
from shared.symbols import UnknownSymbol, broker_spec, canonical_symbol
from shared.timeutil import Clock, floor_minute, from_epoch, to_epoch

log = get_logger("services.market_data")

# Extra bars fetched beyond the window, so a few refused bars do not shorten it.
REJECT_MARGIN = 20
# And the bars the sanity rule's ATR needs before the oldest bar kept (shared.sanity.WARMUP): every bar of a
# published window is judged against the 14 accepted bars before it, as the loaders and the backtester judge it.
SANITY_HISTORY = WARMUP + 1
# Bars fetched once per trading day to compute its levels: two folded trading days (a Monday holds the weekend).
LEVELS_HISTORY_BARS = 5 * 1440
ALIGNED_DELAY = timedelta(seconds=1)


@dataclass
class SymbolState:
    """What the scan remembers about one planned symbol."""

    state: str = "waiting"  # waiting | ok | warming_up | market_closed | stale | error
    detail: str | None = None
    closed_through: datetime | None = None
    watch_from: datetime | None = None  # staleness counts from the later of this and the newest bar's close
    stale: bool = False
    published: tuple[int, PlanSymbol] | None = None  # (newest bar time, plan entry) of the last window published
    rejected_seen: set[int] = field(default_factory=set)  # bar times whose refusal was already counted
    repaired_seen: set[int] = field(default_factory=set)  # bar times whose repair was already counted
    refused_newest: tuple[int, str] | None = None  # (time, reason) of the newest bar the last scan refused
    levels_day: datetime | None = None
    levels: Levels | None = None
    error: str | None = None  # the feed's last failure on this symbol (logged once), None once it serves again


async def _resolve(value):
    return await value if inspect.isawaitable(value) else value


class MarketDataService:
    def __init__(self, *, bus: Bus, feed: Feed, clock: Clock, settings: Settings, instance: str = "md-1") -> None:
        self._bus = bus
        self.feed = feed
        self.clock = clock
        self._settings = settings
        self._instance = instance
        self._plan: ScanPlan | None = None
        self._states: dict[str, SymbolState] = {}
        self._consumer: Consumer | None = None
        self._task: asyncio.Task | None = None
        self._scan_lock = asyncio.Lock()
        self._started = False
        self.last_scan_at: datetime | None = None
        self._server_time = getattr(feed, "server_time", "utc")
        # A feed that serves what the plan names (mt5) is handed each plan this service keeps.
        self._plan_follower: PlanFollower | None = feed if isinstance(feed, PlanFollower) else None
        self._digits: dict[str, int | None] = {}

    # --- life cycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._count_file_refusals()
        self._consumer = await self._bus.consume(topology.plan_queue(self._instance), self.on_plan_queue)
        self._task = asyncio.create_task(self._scan_loop(), name=f"market_data:{self._instance}:scan")
        self._started = True
        log.info("market data started", feed=self.feed.name, scan_mode=self._settings.scan_mode, instance=self._instance)

    async def stop(self) -> None:
        self._started = False
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.cancel()
            self._consumer = None
        for symbol in self._states:
            feed_stale.labels(symbol=symbol).set(0)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        stale = {s: st.detail for s, st in self._states.items() if st.stale}
        details: dict[str, Any] = {
            "feed": self.feed.name,
            "scanning": self._started,
            "last_scan_at": self.last_scan_at.isoformat() if self.last_scan_at else None,
            "plan_symbols": None if self._plan is None else [p.symbol for p in self._plan.symbols],
            "symbols": {
                s: {"state": st.state, "closed_through": st.closed_through.isoformat() if st.closed_through else None, "detail": st.detail}
                for s, st in self._states.items()
            },
            "stale": stale,
        }
        return self._started and not stale, details

    # --- the plan -----------------------------------------------------------------------------------------

    async def on_plan_queue(self, message: Message, delivery: Delivery) -> None:
        if not isinstance(message, ScanPlan):
            raise InvalidMessage(f"{type(message).__name__} does not belong on {delivery.routing_key or 'the plan queue'}")
        self.set_plan(message)

    def set_plan(self, plan: ScanPlan) -> None:
        """Keep `plan` unless a newer one is already held (the decision service republishes it every interval)."""
        if self._plan is not None and plan.produced_at < self._plan.produced_at:
            return
        old = {p.symbol for p in self._plan.symbols} if self._plan else set()
        new = {p.symbol for p in plan.symbols}
        for symbol in old - new:
            self._states.pop(symbol, None)
            feed_stale.labels(symbol=symbol).set(0)
        for symbol in new - old:
            feed_stale.labels(symbol=symbol).set(0)  # the series exists from the first plan on (dashboards, alerts)
        if old != new:
            log.info("scan plan", symbols=sorted(new))
        self._plan = plan
        if self._plan_follower is not None:
            self._plan_follower.update_plan(plan)

    @property
    def plan(self) -> ScanPlan | None:
        return self._plan

    # --- the scan clock -----------------------------------------------------------------------------------

    def next_scan_at(self, *, after: datetime | None, now: datetime) -> datetime:
        """The scan after the one due at `after` (None: the first), never in the past of `now`.

        `interval`: every scan_interval_s from the first scan (which is at once), skipping any missed.
        `aligned`: one second after each M1 close (hh:mm:01).
        """
        if after is not None and after > now + timedelta(seconds=max(self._settings.scan_interval_s, BAR_SECONDS)):
            after = None  # the clock was set back (a terminal's first reading behind the guess): plan from now
        if self._settings.scan_mode == "aligned":
            t = now if after is None else max(now, after + timedelta(microseconds=1))
            slot = floor_minute(t) + ALIGNED_DELAY
            return slot if slot >= t else slot + timedelta(seconds=BAR_SECONDS)
        if after is None:
            return now
        interval = timedelta(seconds=self._settings.scan_interval_s)
        missed = max(0, int((now - after) / interval))
        return after + (missed + 1) * interval

    async def _scan_loop(self) -> None:
        due = self.next_scan_at(after=None, now=self.clock.now())
        while True:
            await self.clock.sleep_until(due)
            try:
                await self.scan_once()
            except Exception as exc:  # noqa: BLE001  one failed scan must not stop the clock
                log.exception("scan failed", error=repr(exc))
            due = self.next_scan_at(after=due, now=self.clock.now())

    # --- one scan -----------------------------------------------------------------------------------------

    async def scan_once(self) -> list[BarWindow]:
        """Scan every planned symbol once at the clock's time; return the windows published."""
        async with self._scan_lock:
            started = time.perf_counter()
            now = self.clock.now()
            published: list[BarWindow] = []
            for entry in self._plan.symbols if self._plan else ():
                state = self._states.setdefault(entry.symbol, SymbolState(watch_from=now))
                try:
                    window = await self._scan_symbol(entry, state, now)
                except Exception as exc:  # noqa: BLE001  one symbol's feed failure must not stop the others
                    self._scan_failed(entry.symbol, state, now, exc)
                    continue
                state.error = None
                if window is not None:
                    published.append(window)
            self.last_scan_at = now
            scan_cycle_seconds.observe(time.perf_counter() - started)
            return published

    async def _scan_symbol(self, entry: PlanSymbol, state: SymbolState, now: datetime) -> BarWindow | None:
        symbol = entry.symbol
        size = max(entry.lookback, self._settings.lookback_bars)
        raw = await _resolve(self.feed.closed_bars(symbol, until=now, count=size + REJECT_MARGIN + SANITY_HISTORY))
        bars = self._refuse_bad_bars(symbol, raw, state)
        bars = bars[max(0, len(bars) - size):]
        newest = int(bars.time[-1]) if len(bars) else None
        closed_through = None if newest is None else from_epoch(newest + BAR_SECONDS)
        state.closed_through = closed_through

        market_open = self.feed.market_open(symbol, now)
        if not market_open:
            state.watch_from = now  # no bars expected: staleness starts counting when the market reopens
        if self._check_stale(symbol, state, now, closed_through, market_open=market_open):
            refused = state.refused_newest
            if refused is not None and (closed_through is None or refused[0] >= to_epoch(closed_through)):
                state.detail = f"{state.detail}; the newer bars are refused (newest {from_epoch(refused[0]).isoformat()}: {refused[1]})"
            return None
        if closed_through is None or now - closed_through > timedelta(minutes=self._settings.stale_after_min):
            # Nothing recent enough to trade on: the market is closed, or bars are late but not yet stale.
            state.state = "waiting" if market_open else "market_closed"
            state.detail = None if closed_through is None else f"newest bar closed {closed_through.isoformat()}"
            return None
        if len(bars) < size:
            state.state, state.detail = "warming_up", f"{len(bars)} of {size} closed bars"
            return None
        state.state, state.detail = "ok", None
        if state.published == (newest, entry):
            return None

        window = BarWindow(
            symbol=symbol,
            timeframe="1m",
            bars=BarColumns.from_bars(bars),
            closed_through=closed_through,
            source=self.feed.name,
            levels=await self._levels(symbol, state, newest),
            subscriptions=entry.subscriptions,
            spec=broker_spec(symbol),  # the strategy workers size and round with the broker's spec where one is known
        )
        await self._bus.publish(window, exchange=topology.MARKET_BARS, routing_key=topology.bars_key("1m", symbol))
        state.published = (newest, entry)
        bar_windows_published_total.labels(symbol=symbol).inc()
        return window

    def _scan_failed(self, symbol: str, state: SymbolState, now: datetime, exc: Exception) -> None:
        """Record a failed scan of `symbol` (state `error`, logged once per distinct failure). A feed that keeps
        failing goes stale like one whose bars stop: once no bar has closed for stale_after_min while the market is open."""
        error = f"{type(exc).__name__}: {exc}"
        if error != state.error:
            log.warning("scan of symbol failed", symbol=symbol, error=error)
            state.error = error
        try:
            market_open = self.feed.market_open(symbol, now)
        except Exception:  # noqa: BLE001  a symbol the feed does not know is not open
            market_open = False
        if not market_open:
            state.watch_from = now
        if self._check_stale(symbol, state, now, state.closed_through, market_open=market_open):
            state.detail = f"{state.detail}; the feed fails: {error}"
        else:
            state.state, state.detail = "error", error

    def _check(self, symbol: str, bars: Bars) -> BarCheck:
        """The sanity rule on bars of `symbol`: SCALPER_BAR_SANITY_ATR, and the digits of its spec (the broker's, else
        the shipped one; a symbol with neither keeps its prices as the feed gives them)."""
        if symbol not in self._digits:
            try:
                spec = symbols.broker_spec(symbol) or symbols.get_spec(symbol)
            except UnknownSymbol:
                spec = None
            self._digits[symbol] = None if spec is None else spec.digits
        return check_bars(bars, max_atr=self._settings.bar_sanity_atr, digits=self._digits[symbol])

    def _count_file_refusals(self) -> None:
        """Count, once, the bars a replay file's loader refused (shared.sanity's reasons; rows it could not read as
        `unparsable`), so a poisoned file shows in bars_rejected_total as a live feed's bad bars do."""
        rejected = getattr(getattr(self.feed, "load", None), "rejected", None)
        if not rejected:
            return
        symbol = self.feed.symbols()[0]
        for _line, reason in rejected:
            bars_rejected_total.labels(symbol=symbol, reason=reason if reason in BAR_REASONS else "unparsable").inc()

    def _refuse_bad_bars(self, symbol: str, bars: Bars, state: SymbolState) -> Bars:
        """Drop bars that fail the sanity rule; count and log each refused (or repaired) bar once, however many scans see it."""
        checked = self._check(symbol, bars)
        good, rejected = checked.bars, checked.rejected
        state.refused_newest = (int(bars.time[rejected[-1][0]]), rejected[-1][1]) if rejected else None
        for i in checked.repaired:
            bar_time = int(bars.time[i])
            if bar_time not in state.repaired_seen:
                state.repaired_seen.add(bar_time)
                bars_repaired_total.labels(symbol=symbol, reason="price_digits").inc()
        for i, reason in rejected:
            bar_time = int(bars.time[i])
            if bar_time in state.rejected_seen:
                continue
            state.rejected_seen.add(bar_time)
            bars_rejected_total.labels(symbol=symbol, reason=reason).inc()
            log.warning("bar refused", symbol=symbol, bar_time=from_epoch(bar_time).isoformat(), reason=reason, source=self.feed.name)
        if (state.rejected_seen or state.repaired_seen) and len(bars):
            oldest = int(bars.time[0])
            state.rejected_seen = {t for t in state.rejected_seen if t >= oldest}
            state.repaired_seen = {t for t in state.repaired_seen if t >= oldest}
        if state.published is not None and len(good) and int(good.time[-1]) < state.published[0]:
            # The feed went back in time: refuse its newer-than-published view rather than publish an older window.
            newest = int(good.time[-1])
            if newest not in state.rejected_seen:
                state.rejected_seen.add(newest)
                bars_rejected_total.labels(symbol=symbol, reason="time_not_increasing").inc()
                log.warning("feed went back in time", symbol=symbol, newest=from_epoch(newest).isoformat(),
                            published=from_epoch(state.published[0]).isoformat())
            return Bars.empty()
        return good

    def _check_stale(self, symbol: str, state: SymbolState, now: datetime, closed_through: datetime | None, *, market_open: bool) -> bool:
        """Flag (log once, gauge) or clear staleness; return whether the symbol is stale now."""
        since = state.watch_from if closed_through is None or state.watch_from > closed_through else closed_through
        silent = now - since
        stale = market_open and silent > timedelta(minutes=self._settings.stale_after_min)
        if stale:
            last = closed_through.isoformat() if closed_through else "never"
            state.state = "stale"
            state.detail = f"no new closed bar for {silent.total_seconds() / 60:.1f} min while the market is open (last bar closed {last})"
            if not state.stale:
                state.stale = True
                feed_stale.labels(symbol=symbol).set(1)
                log.warning("feed stale: scans of this symbol paused", symbol=symbol, source=self.feed.name, detail=state.detail)
        elif state.stale:
            state.stale = False
            feed_stale.labels(symbol=symbol).set(0)
            log.info("feed no longer stale", symbol=symbol, source=self.feed.name, market_open=market_open,
                     closed_through=closed_through.isoformat() if closed_through else None)
        return stale

    async def _levels(self, symbol: str, state: SymbolState, newest: int) -> Levels | None:
        """The previous trading day's levels for the newest bar (`at` = its open time), computed once per day."""
        at = from_epoch(newest)
        day = trading_day_start(at, self._server_time)
        if state.levels_day != day:
            history = await _resolve(self.feed.closed_bars(symbol, until=at + timedelta(seconds=BAR_SECONDS), count=LEVELS_HISTORY_BARS))
            history = self._check(symbol, history).bars
            state.levels = previous_day_levels(history, at, self._server_time)
            state.levels_day = day
        return state.levels

    # --- reads for the REST routes ------------------------------------------------------------------------

    def resolve_symbol(self, symbol: str) -> str:
        """The feed's canonical name for what a user typed (`XAUUSDm` -> `XAUUSD`); UnknownSymbol if not served."""
        served = self.feed.symbols()
        for candidate in (symbol, canonical_symbol(symbol), symbol.upper()):
            if candidate in served:
                return candidate
        raise UnknownSymbol(f"the {self.feed.name} feed serves {', '.join(served)}, not {symbol!r}")

    async def recent_bars(self, *, symbol: str, count: int) -> Bars:
        """The last `count` sound closed bars of `symbol` at the clock's time."""
        name = self.resolve_symbol(symbol)
        raw = await _resolve(self.feed.closed_bars(name, until=self.clock.now(), count=count + REJECT_MARGIN + SANITY_HISTORY))
        good = self._check(name, raw).bars
        return good[max(0, len(good) - count):]

