"""The strategy worker: take a BarWindow, evaluate each distinct (strategy, params) once, fan matches out to one
Signal per subscribed bot, then report the scan (architecture.md, "Messages" and "Bus topology")."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ValidationError

from shared import metrics
from shared.bars import Bars
from shared.bus import topology
from shared.calibration import Calibration
from shared.calibration import load as load_calibration
from shared.costs import spread_points_of
from shared.bus.base import Bus, Consumer, Delivery, Outgoing
from shared.logging import get_logger
from shared.messages import BarWindow, BotScan, InvalidMessage, Message, ScanReport, ScanResult, Signal, StrategyConfig, signal_id_for
from shared.settings import Settings
from shared.strategies.base import EvalContext, Match, WindowCache
from shared.strategies.catalog import CATALOG, Catalog, InvalidParams
from shared.symbols import UnknownSymbol, get_spec, learn_spec
from shared.timeutil import Clock, SystemClock, from_epoch

log = get_logger(__name__)

Key = tuple[str, BaseModel]  # (strategy name, validated params): what is evaluated once per window


@dataclass(slots=True, eq=False)
class _Entry:
    """A strategy config resolved against the catalog. Bots that run a strategy with its defaults share one entry per
    window, so equality is identity: cheap to look up, where hashing the params model for every bot is not."""

    name: str
    key: Key | None
    error: str | None = None


def _window_bars(window: BarWindow) -> Bars:
    columns = window.bars
    n = len(columns.time)
    if n == 0:
        raise InvalidMessage(f"BarWindow {window.message_id} for {window.symbol} has no bars")
    if any(len(getattr(columns, f)) != n for f in ("open", "high", "low", "close", "tick_volume", "spread")):
        raise InvalidMessage(f"BarWindow {window.message_id} for {window.symbol} has columns of different lengths")
    return columns.to_bars()


def _resolve(window: BarWindow, catalog: Catalog) -> list[list[_Entry]]:
    """Each subscription's configs as catalog keys. A config the catalog cannot judge (unknown name, refused
    parameters) becomes an error for that bot alone: the window's other bots still run."""
    defaults: dict[str, _Entry | InvalidParams] = {}  # by strategy name: the entry every bot on its defaults shares
    plan = []
    for sub in window.subscriptions:
        entries, seen = [], set()
        for config in sub.strategies:
            if config.name in seen:
                entries.append(_Entry(config.name, None, f"{config.name}: listed twice; the first entry is used"))
                continue
            seen.add(config.name)
            if config.name not in catalog:
                # A newer catalog upstream (a rolling deploy): report it for this bot, keep scanning the others.
                entries.append(_Entry(config.name, None, f"{config.name}: unknown strategy"))
                continue
            if config.params:
                resolved = _parse(config, catalog)
            else:  # most bots run a strategy with its defaults: resolve those once per window, not once per bot
                if config.name not in defaults:
                    defaults[config.name] = _parse(config, catalog)
                resolved = defaults[config.name]
            if isinstance(resolved, InvalidParams):
                metrics.strategy_errors_total.labels(strategy=config.name).inc()
                log.warning("strategy_params_refused", strategy=config.name, bot_id=sub.bot_id, symbol=sub.symbol,
                            window_id=str(window.message_id), error=str(resolved))
                problems = str(resolved).removeprefix(f"{config.name}: ")
                entries.append(_Entry(config.name, None, f"{config.name}: invalid parameters: {problems}"))
                continue
            entries.append(resolved)
        plan.append(entries)
    return plan


def _parse(config: StrategyConfig, catalog: Catalog) -> _Entry | InvalidParams:
    """The config as an entry, or why the catalog refuses its parameters."""
    try:
        return _Entry(config.name, (config.name, catalog.parse_params(config.name, config.params)))
    except InvalidParams as exc:
        return exc


def scan_window(window: BarWindow, *, catalog: Catalog, now: datetime, calibration: Calibration | None = None) -> tuple[list[Signal], ScanReport]:
    """Evaluate the window's strategies and build its Signals and ScanReport; pure apart from metrics and logs.

    Raises InvalidMessage for a window that can never be handled (no bars, unknown symbol); a subscription's refused
    parameters or unknown strategy are reported in that bot's `errors` and the others still run.
    """
    bar_time = None
    if window.bars.time:
        bar_time = from_epoch(window.bars.time[-1])
    if not window.subscriptions:
        return [], ScanReport(window_id=window.message_id, symbol=window.symbol, timeframe=window.timeframe,
                              bar_time=bar_time or window.closed_through, bots=(), produced_at=now)
    bars = _window_bars(window)
    if window.spec is not None:
        learn_spec(window.spec)  # the broker's spec, from the terminal that made the window
    try:
        spec = get_spec(window.symbol)
    except UnknownSymbol as exc:
        raise InvalidMessage(str(exc)) from None
    plan = _resolve(window, catalog)
    # One indicator cache per window: strategies that need ATR(14) (or any same indicator) on these bars share it.
    ctx = EvalContext(spec=spec, levels=window.levels, cache=WindowCache(bars))
    spread = spread_points_of(bars, spec)  # the decision's cost gates read it back (features["spread_points"])

    results: dict[Key, Match | Exception | None] = {}  # one evaluation per distinct (strategy, params)
    outcomes: dict[_Entry, Match | Exception | None] = {}  # each entry's result, looked up by identity per bot
    for entries in plan:
        for entry in entries:
            if entry.key is None or entry in outcomes:
                continue
            if entry.key not in results:
                results[entry.key] = _evaluate(entry.key, bars, ctx, catalog=catalog, window=window, bar_time=bar_time)
            outcomes[entry] = results[entry.key]

    signals: list[Signal] = []
    bots: list[BotScan] = []
    for sub, entries in zip(window.subscriptions, plan, strict=True):
        evaluated, signal_ids, errors = [], [], []
        for entry in entries:
            if entry.key is None:
                errors.append(entry.error)
                continue
            evaluated.append(entry.name)
            result = outcomes[entry]
            if result is None:
                continue
            if isinstance(result, Exception):
                errors.append(f"{entry.name}: {type(result).__name__}: {result}")
                continue
            timeframe = catalog.get(entry.name).timeframe
            # A 5m strategy judges a 5m bar built from the window: the signal carries that bar's open time.
            signal_bar_time = bar_time if result.bar_time is None else from_epoch(result.bar_time)
            quality = None if calibration is None else calibration.estimate(
                strategy=entry.name, symbol=spec.name, score=result.score, features=result.features, entry=result.entry,
                stop=result.stop, target=result.target, bar_time=signal_bar_time, spread_points=spread, spec=spec)
            signal_id = signal_id_for(
                bot_id=sub.bot_id, symbol=sub.symbol, strategy=entry.name, timeframe=timeframe, bar_time=signal_bar_time
            )
            try:
                signal = Signal(
                    signal_id=signal_id,
                    window_id=window.message_id,
                    bot_id=sub.bot_id,
                    account_id=sub.account_id,
                    symbol=sub.symbol,
                    timeframe=timeframe,
                    strategy=entry.name,
                    side=result.side,
                    bar_time=signal_bar_time,
                    entry=result.entry,
                    stop=result.stop,
                    target=result.target,
                    score=result.score,
                    features={**result.features, "spread_points": spread},
                    p_win=None if quality is None else quality[0],
                    expected_r_net=None if quality is None else quality[1],
                    produced_at=now,
                )
            except ValidationError as exc:  # a strategy's match that no Signal can carry is that strategy's bug
                metrics.strategy_errors_total.labels(strategy=entry.name).inc()
                log.error("strategy_bad_match", strategy=entry.name, symbol=window.symbol, bar_time=bar_time.isoformat(),
                          error=str(exc))
                errors.append(f"{entry.name}: match is not a valid Signal: {exc.errors()[0]['msg']}")
                continue
            signals.append(signal)
            signal_ids.append(signal_id)
        bots.append(BotScan(bot_id=sub.bot_id, strategies=tuple(evaluated), signal_ids=tuple(signal_ids), errors=tuple(errors)))

    report = ScanReport(window_id=window.message_id, symbol=window.symbol, timeframe=window.timeframe, bar_time=bar_time,
                        bots=tuple(bots), produced_at=now)
    return signals, report


def _evaluate(key: Key, bars: Bars, ctx: EvalContext, *, catalog: Catalog, window: BarWindow, bar_time: datetime) -> Match | Exception | None:
    """One strategy's verdict on the window; a strategy that raises (or returns something else) gives its exception."""
    name, params = key
    try:
        match = catalog.get(name).evaluate(bars, ctx, params)
        if match is not None and not isinstance(match, Match):
            raise TypeError(f"evaluate returned {type(match).__name__}, not Match or None")
    except Exception as exc:  # one bad strategy must not stop the others (conventions.md, "Strategies")
        metrics.strategy_errors_total.labels(strategy=name).inc()
        log.exception("strategy_failed", strategy=name, symbol=window.symbol, bar_time=bar_time.isoformat(),
                      window_id=str(window.message_id))
        return exc
    return match


class StrategyWorker:
    """Consume `strategy.bars` (every worker competes for it), publish Signals, then the window's ScanReport."""

    def __init__(self, *, bus: Bus, settings: Settings, catalog: Catalog = CATALOG, clock: Clock | None = None) -> None:
        self._bus = bus
        self._settings = settings
        self._catalog = catalog
        self._clock = clock or SystemClock()
        self._consumer: Consumer | None = None
        # SCALPER_CALIBRATION: refused at start-up when unreadable (a worker that silently drops p_win would let the
        # bots' min_expected_r gate pass everything).
        self._calibration = load_calibration(settings.calibration) if settings.calibration else None
        if self._calibration is not None:
            log.info("calibration_loaded", path=str(settings.calibration), models=len(self._calibration.models))

    async def start(self) -> None:
        if self._consumer is None:
            self._consumer = await self._bus.consume(
                topology.STRATEGY_BARS, self._on_message, prefetch=self._settings.prefetch,
                concurrency=self._settings.strategy_concurrency,
            )

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.cancel()

    async def handle_window(self, window: BarWindow) -> tuple[list[Signal], ScanReport]:
        """Evaluate one window: its Signals (not yet published) and its ScanReport."""
        signals, report = scan_window(window, catalog=self._catalog, now=self._clock.now(), calibration=self._calibration)
        metrics.bar_to_signal_seconds.observe(max(0.0, (self._clock.now() - window.produced_at).total_seconds()))
        return signals, report

    async def _on_message(self, message: Message, delivery: Delivery) -> None:
        if not isinstance(message, BarWindow):
            raise InvalidMessage(f"strategy.bars carries BarWindow messages, not {type(message).__name__}")
        signals, report = await self.handle_window(message)
        # The window's signals and its report in one message: decision decides each account's signals of the window
        # together. A redelivered window republishes the same signal_ids; decision's unique keys drop the repeats.
        result = ScanResult(signals=tuple(signals), report=report, produced_at=report.produced_at)
        await self._bus.publish_many([Outgoing(result, topology.STRATEGY_SIGNALS, topology.scan_report_key(message.symbol))])
