"""Trade a history as live would: the live signals (signals.py), the decision's pure risk rules
(services/decision/risk.decide, the kill switch's daily_loss_tripped), the executor's paper-fill model
(services/executor/fills.py) and its position rules (services/executor/trailing.py).

Event-driven, not bar-by-bar: work is done only at signal bars and over the bars a position is open, so a year of M1
costs what its signals cost. Rules (architecture.md, "Fills"): bars are bid prices, ask = bid + spread; an order
fills at the open of the bar after the signal bar; a long's stop and target trigger on the bid, a short's on the ask;
a gap through the stop fills at the open; a bar touching both takes the stop.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scalper.backtest.gcpause import gc_paused
from scalper.backtest.invalidation import Invalidations
from scalper.backtest.jsonout import iso_utc, rounded
from scalper.backtest.refusals import bot_refusal
from scalper.backtest.signals import Progress, ScanStats, SignalEvent, day_keys, scan_history
from services.decision.daily_loss import DailyPnl, daily_loss_tripped
from services.decision.risk import BotRules, Exposure, decide, margin_required
from services.executor import fills
from services.executor.trailing import ExitRule, TrailRule, time_stop_hit, trailing_stop
from shared.bars import Bars
from shared.messages import Signal, StrategyConfig
from shared.sanity import check_bars
from shared.settings import get_settings
from shared.stats import ClosedTrade, compute_stats, compute_stats_arrays
from shared.strategies.catalog import CATALOG, MIN_LOOKBACK, Catalog
from shared.strategies.indicators import atr as atr_fn
from shared.symbols import SymbolSpec
from shared.timeutil import from_epoch

BAR_S = 60
KILL_SWITCH_MAX_DAILY_LOSS_PCT = 2.0  # architecture.md, "Kill switch"
_FIRST_CHUNK = 64  # bars searched first for a trade's exit (most M1 scalps close within it)
_SEARCH_CHUNK = 512
_NO_ID = uuid.UUID(int=0)


@dataclass(frozen=True, slots=True)
class BacktestConfig:
    symbol: str
    strategies: tuple[StrategyConfig, ...]
    engine: str = "scalper"
    balance: float = 10_000.0
    commission_per_lot: float = 0.0  # account currency per lot, per round turn, charged at the close
    swap_per_lot_day: float = 0.0  # account currency per lot per broker-day rollover held (negative: a cost)
    spread_points: float | None = None  # used when the file carries no spread (all zero); None: the symbol's typical
    rules: BotRules = field(default_factory=BotRules)
    kill_switch_pct: float = KILL_SWITCH_MAX_DAILY_LOSS_PCT
    server_time: str = "utc"  # broker-day boundaries (trades per day, kill switch, swap); backtests default to UTC
    min_lookback: int = MIN_LOOKBACK
    trail: TrailRule = field(default_factory=TrailRule)
    exits: ExitRule = field(default_factory=ExitRule)
    # The live limits (SCALPER_BAR_SANITY_ATR, SCALPER_MAX_STOP_ATR), so a backtest refuses what live refuses.
    bar_sanity_atr: float = field(default_factory=lambda: get_settings().bar_sanity_atr)
    max_stop_atr: float = field(default_factory=lambda: get_settings().max_stop_atr)


@dataclass(slots=True)
class Trade:
    strategy: str
    side: str
    score: float
    signal_index: int
    entry_index: int
    entry_price: float
    sl: float | None
    tp: float | None
    initial_sl: float | None
    volume: float
    exit_index: int = -1
    exit_price: float = 0.0
    reason: str = ""
    entry_time: int = 0
    exit_time: int = 0
    pnl: float = 0.0  # net of commission and swap
    gross: float = 0.0
    commission: float = 0.0
    swap: float = 0.0
    pips: float = 0.0
    r_multiple: float | None = None
    risk_money: float = 0.0  # what the initial stop risks, account currency (0 without a stop)

    def to_closed(self) -> ClosedTrade:
        return ClosedTrade(strategy=self.strategy, side=self.side, pnl=self.pnl, pips=self.pips, r_multiple=self.r_multiple,
                           opened_at=from_epoch(self.entry_time), closed_at=from_epoch(self.exit_time))

    def as_dict(self) -> dict[str, Any]:
        """The trade's JSON row (trade_rows)."""
        return trade_rows([self])[0]


def trade_rows(trades: Sequence[Trade]) -> list[dict[str, Any]]:
    """Each trade's JSON row; its numbers rounded and its times formatted a column at a time (jsonout.rounded and
    iso_utc: the values of round() and from_epoch(x).isoformat())."""
    columns = (
        iso_utc([t.entry_time for t in trades]), iso_utc([t.exit_time for t in trades]),
        rounded([t.score for t in trades], 4), rounded([t.pnl for t in trades], 2),
        rounded([t.commission for t in trades], 2), rounded([t.swap for t in trades], 2),
        rounded([t.pips for t in trades], 2), rounded([t.r_multiple for t in trades], 4),
    )
    return [
        {"strategy": t.strategy, "side": t.side, "score": score, "opened_at": opened_at, "closed_at": closed_at,
         "entry": t.entry_price, "exit": t.exit_price, "sl": t.initial_sl, "tp": t.tp, "volume": t.volume,
         "reason": t.reason, "pnl": pnl, "commission": commission, "swap": swap, "pips": pips, "r_multiple": r_multiple}
        for t, opened_at, closed_at, score, pnl, commission, swap, pips, r_multiple in zip(trades, *columns, strict=True)
    ]


@dataclass(slots=True)
class BacktestResult:
    config: BacktestConfig
    trades: list[Trade]
    signals: list[SignalEvent]
    ignored: Counter
    scan: ScanStats
    kill_days: list[str]
    first: int | None
    last: int | None
    bars: int
    stats: dict[str, Any] = field(default_factory=dict)
    refused: list[tuple[int, str]] = field(default_factory=list)  # (bar time, reason): bars the sanity rule refused
    repaired: int = 0  # bars whose prices were rounded to the symbol's digits
    traded: Bars | None = None  # the bars after the sanity rule: the ones the signals and trades index


def spreads_for(bars: Bars, spec: SymbolSpec, spread_points: float | None) -> np.ndarray:
    """Spread in points per bar: the file's, or (a file without spreads) `spread_points` / the symbol's typical one."""
    if len(bars) and np.any(bars.spread != 0):
        return bars.spread.astype(np.float64)
    value = spec.typical_spread_points if spread_points is None else spread_points
    return np.full(len(bars), float(value))


class _Book:
    """The simulation state over one history."""

    def __init__(self, bars: Bars, spec: SymbolSpec, config: BacktestConfig, catalog: Catalog = CATALOG) -> None:
        self.bars, self.spec, self.config = bars, spec, config
        self.invalid = Invalidations(bars, spec, config.strategies, enabled=config.exits.invalidation, catalog=catalog)
        self.n = len(bars)
        self.spread = spreads_for(bars, spec, config.spread_points)
        self.ask_add = self.spread * spec.point
        self.ask_low, self.ask_high = bars.low + self.ask_add, bars.high + self.ask_add  # a short's stop and target trigger on the ask
        # Broker day of each bar's close (decisions happen at a bar's close; a position is marked at closes).
        self.day = day_keys(bars.time + BAR_S, config.server_time)
        # The last bar of each bar's broker day (a run of equal keys: the keys never decrease along the bars).
        runs = np.flatnonzero(self.day[1:] != self.day[:-1])
        self.day_last = np.repeat(np.append(runs, len(bars) - 1), np.diff(np.concatenate(([-1], runs, [len(bars) - 1]))))
        self.day_of_open = day_keys(bars.time, config.server_time)
        self.trades: list[Trade] = []
        self.active: list[Trade] = []  # trades whose exit bar the kill switch has not passed yet
        self.settled_total = 0.0
        self.settled_by_day: dict[int, float] = {}
        self.checked = -1  # kill switch checked through this bar's close
        self.killed_day: int | None = None
        self.kill_days: list[str] = []
        self.sent_per_day: Counter = Counter()
        self.ignored: Counter = Counter()
        self._atr: np.ndarray | None = None
        # Built without validation: a signal's values passed Match's checks (or, from arrays, the same checks in
        # signals._fragile), and validating a model per trade cost more than the risk checks themselves.
        self.signal_template = Signal.model_construct(
            signal_id=_NO_ID,  # the dedupe key's uuid5 is not a risk input (and costs more than the check itself)
            message_id=_NO_ID, produced_at=from_epoch(0),  # no clock, no random ids: a backtest is deterministic
            bot_id=1, account_id=1, symbol=config.symbol, timeframe="1m", strategy="", side="buy",
            bar_time=from_epoch(0), entry=0.0, stop=0.0, target=0.0, score=0.0, features={}, p_win=None, expected_r_net=None,
        )

    # --- exits -------------------------------------------------------------------------------------------------

    def _atr_at(self, k: int) -> float | None:
        if self._atr is None:
            b = self.bars
            self._atr = atr_fn(b.high, b.low, b.close, self.config.trail.atr_period)
        value = float(self._atr[k])
        return value if value > 0 else None

    def _first_hit(self, t: Trade, start: int, stop: int) -> tuple[int, tuple[float, str]] | None:
        """The first bar in [start, stop) whose range takes the trade's stop or target, and what fills.exit_on_bar
        answers there; the bars are screened in stretches by the same comparisons the fill model makes."""
        b, spec = self.bars, self.spec
        k, size = start, _FIRST_CHUNK
        while k < stop:
            end = min(k + size, stop)
            if t.side == "buy":
                low, high = b.low[k:end], b.high[k:end]
            else:
                low, high = self.ask_low[k:end], self.ask_high[k:end]
            if t.sl is not None and t.tp is not None:
                hit = (low <= t.sl) | (high >= t.tp) if t.side == "buy" else (high >= t.sl) | (low <= t.tp)
            elif t.sl is not None:
                hit = (low <= t.sl) if t.side == "buy" else (high >= t.sl)
            elif t.tp is not None:
                hit = (high >= t.tp) if t.side == "buy" else (low <= t.tp)
            else:
                return None
            for j in np.flatnonzero(hit).tolist():  # the fill model decides (it agrees with the mask; this keeps it the one rule)
                got = fills.exit_on_bar(t.side, t.sl, t.tp, open=float(b.open[k + j]), high=float(b.high[k + j]),
                                        low=float(b.low[k + j]), spread_points=float(self.spread[k + j]), spec=spec)
                if got is not None:
                    return k + j, got
            k, size = end, _SEARCH_CHUNK
        return None

    def _find_exit(self, t: Trade, invalid_at: int | None = None) -> None:
        """Set the trade's exit: the first bar from its entry bar on whose range takes its stop or target (fills.exit_on_bar),
        with the executor's trailing stop and time stop applied at each bar's close when they are on, and the
        strategy's invalidation at the close of bar `invalid_at` (closed at the next bar's open); else the end."""
        b, spec, e = self.bars, self.spec, t.entry_index
        if self.config.trail.mode == "off" and self.config.exits.time_stop_min <= 0:
            # No rule moves the stop or closes the trade at a bar's close: the first hit up to the invalidation bar.
            if invalid_at is not None:
                invalid_at = max(invalid_at, e)  # the entry bar's close is the first the monitor judges
            last = self.n if invalid_at is None else min(invalid_at + 1, self.n)
            hit = self._first_hit(t, e, last)
            if hit is not None:
                self._close(t, hit[0], hit[1][0], hit[1][1])
            elif invalid_at is not None and invalid_at + 1 < self.n:  # as the executor's monitor, after the bar's close
                self._close(t, invalid_at + 1, fills.exit_price(t.side, float(b.open[invalid_at + 1]),
                                                                float(self.spread[invalid_at + 1]), spec), "early_exit")
            else:
                self._close_at_end(t)
            return
        trailed = False
        opened_at = from_epoch(int(b.time[e]))
        for k in range(e, self.n):
            got = fills.exit_on_bar(t.side, t.sl, t.tp, open=float(b.open[k]), high=float(b.high[k]), low=float(b.low[k]),
                                    spread_points=float(self.spread[k]), spec=spec)
            if got is not None:
                reason = "trail" if (got[1] == "sl" and trailed) else got[1]
                self._close(t, k, got[0], reason)
                return
            if k + 1 >= self.n:
                break
            # The monitor's rules at this bar's close (the executor runs them on its cycle; here once a bar).
            if time_stop_hit(opened_at=opened_at, now=from_epoch(int(b.time[k]) + BAR_S), rule=self.config.exits):
                price = fills.exit_price(t.side, float(b.open[k + 1]), float(self.spread[k + 1]), spec)
                self._close(t, k + 1, price, "early_exit")
                return
            if invalid_at is not None and k >= invalid_at:  # as the executor's monitor, after the bar's close
                self._close(t, k + 1, fills.exit_price(t.side, float(b.open[k + 1]), float(self.spread[k + 1]), spec), "early_exit")
                return
            if self.config.trail.mode != "off":
                bid = float(b.close[k])
                new = trailing_stop(side=t.side, open_price=t.entry_price, sl=t.sl, bid=bid, ask=bid + float(self.ask_add[k]),
                                    spec=spec, rule=self.config.trail,
                                    atr=self._atr_at(k) if self.config.trail.mode == "atr" else None)
                if new is not None:
                    t.sl, trailed = new, True
        self._close_at_end(t)

    def _close_at_end(self, t: Trade) -> None:
        k = self.n - 1
        self._close(t, k, fills.exit_price(t.side, float(self.bars.close[k]), float(self.spread[k]), self.spec), "end_of_data")

    def _close(self, t: Trade, k: int, price: float, reason: str) -> None:
        spec, cfg = self.spec, self.config
        t.exit_index, t.exit_price, t.reason = k, float(price), reason
        t.exit_time = int(self.bars.time[k]) + (BAR_S if reason == "end_of_data" else 0)
        t.gross = spec.profit(t.side, t.volume, t.entry_price, t.exit_price)
        t.commission = cfg.commission_per_lot * t.volume
        rollovers = int((self.day_of_open[k] - self.day_of_open[t.entry_index]) // 86400)
        t.swap = cfg.swap_per_lot_day * t.volume * max(0, rollovers)
        t.pnl = t.gross - t.commission + t.swap
        direction = 1.0 if t.side == "buy" else -1.0
        t.pips = spec.price_to_pips(direction * (t.exit_price - t.entry_price))
        risk = t.risk_money
        t.r_multiple = t.pnl / risk if risk > 0 else None

    # --- the kill switch -----------------------------------------------------------------------------------------

    def _mark(self, t: Trade, a: int, b: int) -> np.ndarray:
        """Open P&L of `t` at the closes of bars a..b (what closing it there would get: fills.mark_price)."""
        closes = self.bars.close[a : b + 1]
        price = closes if t.side == "buy" else closes + self.ask_add[a : b + 1]
        direction = 1.0 if t.side == "buy" else -1.0
        in_quote = direction * (price - t.entry_price) * t.volume * self.spec.contract_size
        if self.spec.quote_currency == "USD":
            return in_quote
        if self.spec.base_currency == "USD":
            return in_quote / price
        return in_quote

    def advance(self, to: int) -> None:
        """Run the kill switch over the closes of bars (checked, to]; trip it where the day's loss passes the limit.

        Afterwards `active` holds exactly the trades still open at bar `to`'s close (exit bar > to).
        """
        while self.checked < to:
            a = self.checked + 1
            if not self.active:
                self.checked = to
                return
            # Stay inside one broker day per pass.
            day = int(self.day[a])
            b = min(to, int(self.day_last[a]))
            realised_before = self.settled_by_day.get(day, 0.0)
            start_balance = self.config.balance + self.settled_total - realised_before
            if self.killed_day != day and self._may_trip(a, b, realised_before, start_balance):
                realised = np.full(b - a + 1, float(realised_before))
                open_pnl = np.zeros(b - a + 1)
                for t in self.active:
                    x = t.exit_index
                    if t.entry_index > b:
                        continue
                    if a <= x <= b:
                        realised[x - a :] += t.pnl
                    lo, hi = max(t.entry_index, a), min(x - 1, b)
                    if lo <= hi:
                        open_pnl[lo - a : hi - a + 1] += self._mark(t, lo, hi)
                total = realised + open_pnl
                loss_pct = -total / start_balance * 100.0 if start_balance > 0 else np.zeros_like(total)
                over = np.flatnonzero(loss_pct > self.config.kill_switch_pct)
                if len(over):
                    i = int(over[0])
                    # The decision service's own rule decides (the vector above only finds where to ask it).
                    if daily_loss_tripped(DailyPnl(float(realised[i]), float(open_pnl[i]), start_balance), limit_pct=self.config.kill_switch_pct):
                        self._kill(a + i, day)
            self._settle(b)
            self.checked = b

    def _may_trip(self, a: int, b: int, realised_before: float, start_balance: float) -> bool:
        """Whether the day's loss can pass the limit at any close of bars a..b: a cheap bound first.

        Before its exit bar a position's mark at a close is never below its initial stop (a close beyond the stop
        means the bar traded through it, so that bar is the exit bar; trailing only tightens the stop), so its open
        loss is at most the money its initial stop risks; a trade closing in a..b loses at most its realised loss.
        """
        if start_balance <= 0:
            return True
        worst = -min(realised_before, 0.0)
        for t in self.active:
            if t.entry_index > b:
                continue
            if t.initial_sl is None:
                return True
            worst += max(t.risk_money, -t.pnl if t.exit_index <= b else 0.0) * 1.5 + 1e-9  # 1.5: currency conversion slack
        return worst / start_balance * 100.0 > self.config.kill_switch_pct

    def _settle(self, through: int) -> None:
        keep = []
        for t in self.active:
            if t.exit_index <= through:
                self.settled_total += t.pnl
                d = int(self.day[t.exit_index])
                self.settled_by_day[d] = self.settled_by_day.get(d, 0.0) + t.pnl
            else:
                keep.append(t)
        self.active = keep

    def _kill(self, k: int, day: int) -> None:
        """Bot killed at bar k's close: close_all at the next bar's open; no new trades until the next broker day."""
        self.killed_day = day
        self.kill_days.append(from_epoch(day).date().isoformat())
        if k + 1 >= self.n:
            return
        for t in self.active:
            if t.exit_index > k and t.entry_index <= k:
                price = fills.exit_price(t.side, float(self.bars.open[k + 1]), float(self.spread[k + 1]), self.spec)
                self._close(t, k + 1, price, "kill_switch")

    # --- decisions -----------------------------------------------------------------------------------------------

    def on_signal(self, s: SignalEvent) -> None:
        cfg, spec, j = self.config, self.spec, s.index
        day = int(self.day[j])
        open_now = [t for t in self.active if t.exit_index > j]  # advance(j) ran: the positions open at j's close
        status = "killed" if self.killed_day == day else cfg.rules.status
        refused = bot_refusal(cfg.rules, status=status, score=s.score, open_positions=len(open_now),
                              open_on_symbol=len(open_now), trades_today=self.sent_per_day[day])
        if refused is not None:  # most signals end here (a position open, the day's trades used): no Signal built
            self.ignored[refused] += 1
            return
        rules = cfg.rules if status == cfg.rules.status else _with_status(cfg.rules, status)
        used_margin = sum(margin_required(spec=spec, volume=t.volume, price=t.entry_price, leverage=100.0) for t in open_now)
        exposure = Exposure(open_positions=len(open_now), open_on_symbol=len(open_now), trades_today=self.sent_per_day[day],
                            margin_free=self.config.balance + self.settled_total - used_margin)
        bar_time = from_epoch(s.bar_time)
        # A copy of the run's one unvalidated Signal with this signal's fields (cheaper than constructing each).
        signal = self.signal_template.model_copy(update={
            "produced_at": bar_time, "timeframe": s.timeframe, "strategy": s.strategy, "side": s.side,
            "bar_time": bar_time, "entry": s.entry, "stop": s.stop, "target": s.target, "score": s.score,
            "features": {**s.features, "spread_points": float(self.spread[j])},  # as the live worker sends it
            "p_win": s.p_win, "expected_r_net": s.expected_r_net,  # the calibration's, when one is loaded
        })
        decision = decide(rules=rules, signal=signal, exposure=exposure, spec=spec, max_stop_atr=cfg.max_stop_atr)
        if decision.action != "open":
            self.ignored[decision.reason] += 1
            return
        e = j + 1
        if e >= self.n:
            self.ignored["end_of_data"] += 1
            return
        bid, sp = float(self.bars.open[e]), float(self.spread[e])
        problem = fills.stops_problem(s.side, bid, sp, spec, decision.sl, decision.tp)
        if problem:  # the paper broker refuses it the same way; a rejected order is not one of the day's trades
            self.ignored["rejected_invalid_stops"] += 1
            return
        self.sent_per_day[day] += 1  # live counts orders sent or filled (decisions.LIVE_ORDER_STATUSES)
        price = fills.entry_price(s.side, bid, sp, spec)
        t = Trade(strategy=s.strategy, side=s.side, score=s.score, signal_index=j, entry_index=e, entry_price=price,
                  sl=decision.sl, tp=decision.tp, initial_sl=decision.sl, volume=decision.volume, entry_time=int(self.bars.time[e]))
        if t.initial_sl is not None:
            t.risk_money = abs(spec.profit(t.side, t.volume, t.entry_price, t.initial_sl))
        self._find_exit(t, self.invalid.first(s.strategy, s.features, e))  # invalidation exit
        self.trades.append(t)
        self.active.append(t)


def _with_status(rules: BotRules, status: str) -> BotRules:
    import dataclasses

    return dataclasses.replace(rules, status=status)


@gc_paused
def run_backtest(
    bars: Bars,
    spec: SymbolSpec,
    config: BacktestConfig,
    *,
    catalog: Catalog = CATALOG,
    progress: Progress | None = None,
    signals: Sequence[SignalEvent] | None = None,
    trade_from: int | None = None,
) -> BacktestResult:
    """Backtest `config` on `bars` (oldest first, UTC): signals, decisions, fills, stats.

    The bars pass the live sanity rule first (shared.sanity.check_bars with the symbol's digits and
    config.bar_sanity_atr): a bar live would refuse is not traded on. Bars before `trade_from` (epoch seconds) only
    warm up the windows and levels: no signal is judged there. `signals`, when given, index the bars as given.
    """
    checked = check_bars(bars, max_atr=config.bar_sanity_atr, digits=spec.digits)
    if checked.bars is not bars and signals is not None:
        raise ValueError(f"the sanity rule refused or rounded {len(checked.rejected) + len(checked.repaired)} bars: "
                         "compute the signals on the checked bars (shared.sanity.check_bars)")
    refused = [(int(bars.time[i]), reason) for i, reason in checked.rejected]
    bars = checked.bars
    scan = ScanStats()
    start = 0 if trade_from is None else int(np.searchsorted(bars.time, trade_from))
    if signals is None:
        signals = scan_history(bars, spec=spec, configs=config.strategies, catalog=catalog, server_time=config.server_time,
                               min_lookback=config.min_lookback, start=start, progress=progress, stats=scan,
                               score_marks=(config.rules.decision_min_score,), stop_atr_marks=(config.max_stop_atr,))
    book = _Book(bars, spec, config, catalog)  # the catalog's invalidation rules
    for s in signals:
        book.advance(s.index)
        book.on_signal(s)
    if len(bars):
        book.advance(len(bars) - 1)
    trades = sorted(book.trades, key=lambda t: (t.exit_time, t.entry_time))
    result = BacktestResult(
        config=config, trades=trades, signals=list(signals), ignored=book.ignored, scan=scan, kill_days=book.kill_days,
        first=int(bars.time[start]) if start < len(bars) else None, last=int(bars.time[-1]) if len(bars) else None, bars=len(bars),
    )
    result.refused, result.repaired, result.traded = refused, len(checked.repaired), bars
    result.stats = compute_stats_arrays([t.strategy for t in trades], [t.pnl for t in trades], [t.pips for t in trades],
                                        [np.nan if t.r_multiple is None else t.r_multiple for t in trades],
                                        [t.exit_time for t in trades], [t.entry_time for t in trades])
    for name in (c.name for c in config.strategies):
        result.stats["by_strategy"].setdefault(name, compute_stats([])["total"])
    return result
