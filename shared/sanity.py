"""Price sanity, in one place: the checks every bar passes before it is used (the live feed, the loaders and the
backtester all call `check_bars`), and the stop/target/quote rules an order passes before it is sent.

A bar is refused when it is not finite and positive, is not a bar (high below low, open or close outside the range),
is not after the bar before it, or is an outlier: its range, or its move from the previous close, exceeds
`max_atr` times the ATR(14) of the accepted bars before it. Prices with more decimals than the symbol's digits are
rounded and counted as repaired, not refused.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from shared.bars import FIELDS, Bars, bar_problem

ATR_PERIOD = 14
# A bar's ATR is the mean true range of the ATR_PERIOD accepted bars before it: a plain mean (TA-Lib's ATR seed), not
# Wilder's smoothing, so the verdict on a bar depends on those bars only, never on where the series (a live window,
# a file, a backtest slice) starts.
WARMUP = ATR_PERIOD
# Until WARMUP bars are accepted the ATR is the median range of the first WARMUP + 1 bars of the series, and the first
# bar's move is measured from their median close: a median is not moved by a few absurd bars, a mean is.
# The ATR is never below this fraction of the previous close (0.1 basis point): a run of flat bars makes no zero limit.
ATR_FLOOR = 1e-5
OUTLIER_REASONS = ("range_outlier", "jump_outlier")
BAR_REASONS = ("nan_price", "non_positive_price", "high_below_low", "open_close_outside_range", "time_not_increasing",
               *OUTLIER_REASONS)

_NO_TIME = np.iinfo(np.int64).min
_CHUNK = 1 << 15  # bars per chunk of the vector checks: each temporary fits the cache, not a 28 MB column per pass
_ROUNDABLE = 1e15


@dataclass(frozen=True, slots=True)
class BarCheck:
    """What `check_bars` kept (rounded), what it refused and what it repaired, as indices into the bars it was given."""

    bars: Bars
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index, reason), in order
    repaired: list[int] = field(default_factory=list)  # kept bars whose prices were rounded to the digits


def check_bars(bars: Bars, *, max_atr: float, digits: int | None = None, previous_time: int | None = None) -> BarCheck:
    """Round to `digits` (when given), then split `bars` into the sound ones and (index, reason) for each refused one.

    `max_atr` is the outlier limit in ATRs (SCALPER_BAR_SANITY_ATR); `math.inf` turns the outlier test off.
    `previous_time` is the time of the bar before the first (a duplicate or backwards bar is refused).
    """
    repaired_mask = np.zeros(len(bars), bool)
    if digits is not None and len(bars):
        bars, repaired_mask = round_prices(bars, digits)
    ok, rejected = _basic(bars, previous_time)
    if math.isfinite(max_atr) and ok.any():
        every = bool(ok.all())  # the usual case: no copies of the columns, no index array
        kept = None if every else np.flatnonzero(ok)
        pick = (lambda x: x) if every else (lambda x: x[kept])
        outlier = _outliers(pick(bars.high), pick(bars.low), pick(bars.close), pick(bars.time), max_atr)
        for j, reason in outlier:
            i = j if every else int(kept[j])
            ok[i] = False
            rejected.append((i, reason))
        rejected.sort()
    repaired = np.flatnonzero(repaired_mask & ok).tolist()
    if not rejected:
        return BarCheck(bars, [], repaired)
    return BarCheck(Bars(*(getattr(bars, f)[ok] for f in FIELDS)), rejected, repaired)


def round_prices(bars: Bars, digits: int) -> tuple[Bars, np.ndarray]:
    """The bars with open, high, low, close rounded to `digits`, and a mask of the bars that changed."""
    # Only prices that rounding cannot overflow (1e308 x 10**digits is inf): an absurd one keeps its value and is refused
    # for what it is (an outlier), not as a NaN rounding made.
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = {f: np.where(np.abs(getattr(bars, f)) < _ROUNDABLE, np.round(getattr(bars, f), digits), getattr(bars, f))
                   for f in ("open", "high", "low", "close")}
    with np.errstate(invalid="ignore"):
        changed = np.zeros(len(bars), bool)
        for f, values in rounded.items():
            original = getattr(bars, f)
            changed |= (values != original) & np.isfinite(original)
    if not changed.any():
        return bars, changed
    return Bars(bars.time, rounded["open"], rounded["high"], rounded["low"], rounded["close"], bars.tick_volume, bars.spread), changed


def _basic(bars: Bars, previous_time: int | None) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Finite, positive, a bar, after the one before: a mask and (index, reason) from `bar_problem`.

    Vectorised: `bar_problem` runs only on the rows the array checks flag, with the time of the last accepted bar
    as `previous_time` (so a duplicate or backwards bar is refused, never the good bar before it).
    """
    o, h, lo, c, t = bars.open, bars.high, bars.low, bars.close, bars.time
    n = len(t)
    ok = np.empty(n, bool)
    start = _NO_TIME if previous_time is None else previous_time
    # A price-sound bar whose time is not after the last accepted one is refused; such a bar never raises the
    # running maximum, so the maximum over all price-sound bars before a bar is the last accepted time.
    running_max = _NO_TIME
    rejected = []
    for a in range(0, n, _CHUNK):  # by chunks that stay in the cache: the same values as whole-array passes
        b = min(a + _CHUNK, n)
        oc, hc, lc, cc, tc = o[a:b], h[a:b], lo[a:b], c[a:b], t[a:b]
        with np.errstate(invalid="ignore"):
            price_ok = (
                np.isfinite(oc) & np.isfinite(hc) & np.isfinite(lc) & np.isfinite(cc)
                & (oc > 0) & (hc > 0) & (lc > 0) & (cc > 0)
                & (hc >= lc) & (hc >= np.maximum(oc, cc)) & (lc <= np.minimum(oc, cc))
            )
        running = np.maximum.accumulate(np.where(price_ok, tc, _NO_TIME))
        np.maximum(running, running_max, out=running)
        previous = np.empty(b - a, np.int64)
        previous[0] = running_max
        previous[1:] = running[:-1]
        np.maximum(previous, start, out=previous)
        running_max = int(running[-1])
        np.logical_and(price_ok, tc > previous, out=ok[a:b])
        for j in np.flatnonzero(~ok[a:b]):
            i = a + int(j)
            prev = None if previous[j] == _NO_TIME else int(previous[j])
            reason = bar_problem(time=int(t[i]), open=float(o[i]), high=float(h[i]), low=float(lo[i]), close=float(c[i]), previous_time=prev)
            rejected.append((i, reason or "invalid"))
    return ok, rejected


# --- outliers ----------------------------------------------------------------------------------------------------
#
# On the accepted bars a_0, a_1, ... (oldest first), with TR(a_j) = max(high, prev close) - min(low, prev close)
# (TR(a_0) = its range), a candidate bar with m accepted bars before it is refused as
#   range_outlier  when high - low                      > max_atr * ATR * sqrt(g)
#   jump_outlier   when max(|high - pc|, |low - pc|)    > max_atr * ATR * sqrt(g)
# where pc is the previous accepted close, g the minutes since that bar opened (1 for consecutive bars), and
# ATR = mean TR of the last 14 accepted bars (m >= 14), else the warm-up ATR (module header), floored at ATR_FLOOR x pc.
# The square root: a price wanders as the root of the time it is given, so the bar after a weekend or a session break
# may gap and swing further than a bar one minute after the last (the gold file's reopen of 2026-05-11 after a quiet
# Friday close: a range of 25.5 ATR and a move of 46 ATR, 0.47 and 0.85 once divided by the root of its 2,944
# minutes); an absurd price still does not pass.


def _warmup_reference(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> tuple[float, float]:
    """(warm-up ATR, warm-up anchor close): the median range and close of the series' first WARMUP + 1 bars."""
    head = slice(0, WARMUP + 1)
    return float(np.median(high[head] - low[head])), float(np.median(close[head]))


def _ratio_chunks(high: np.ndarray, low: np.ndarray, close: np.ndarray, time: np.ndarray, size: int = _CHUNK):
    """(start, range ratios, jump ratios) of each chunk of `size` bars: `outlier_ratios` cut in pieces that stay in
    the cache, each element computed by the same operations, in the same order, as on the whole arrays."""
    n = len(high)
    if n == 0:
        return
    warm_atr, warm_close = _warmup_reference(high, low, close)
    for a in range(0, n, size):
        b = min(a + size, n)
        first = max(a - ATR_PERIOD, 0)  # the true ranges of the ATR_PERIOD bars before the chunk are summed too
        prev_close = np.empty(b - first)
        if first == 0:
            prev_close[0] = warm_close
            prev_close[1:] = close[:b - 1]
        else:
            prev_close[:] = close[first - 1:b - 1]
        with np.errstate(over="ignore", invalid="ignore"):
            tr = np.maximum(high[first:b], prev_close)
            tr -= np.minimum(low[first:b], prev_close)
            if first == 0:
                tr[0] = high[0] - low[0]
            atr = np.full(b - a, warm_atr)
            s = max(a, WARMUP)
            if s < b:
                # Window sums, not differences of a running sum: one absurd bar must not turn every later ATR into
                # inf - inf. Added left to right, slice by slice: the same sum, to the bit, as the bar-by-bar
                # path's `sum(trs)`.
                m, at = b - s, s - ATR_PERIOD - first
                window = tr[at:at + m].copy()
                for k in range(1, ATR_PERIOD):
                    window += tr[at + k:at + k + m]
                window /= ATR_PERIOD
                atr[s - a:] = window
            prev_close = prev_close[a - first:]
            np.maximum(atr, ATR_FLOOR * prev_close, out=atr)
            limit_atr = atr  # atr x sqrt(minutes since the previous bar opened, at least 1)
            t0 = max(a, 1)
            minutes = (time[t0:b] - time[t0 - 1:b - 1]).astype(np.float64)
            minutes /= 60.0
            np.maximum(minutes, 1.0, out=minutes)
            np.sqrt(minutes, out=minutes)
            limit_atr[t0 - a:] *= minutes
            jump = np.abs(high[a:b] - prev_close)
            np.maximum(jump, np.abs(low[a:b] - prev_close), out=jump)
            jump /= limit_atr
            range_ratio = high[a:b] - low[a:b]
            range_ratio /= limit_atr
        yield a, range_ratio, jump


def outlier_ratios(high: np.ndarray, low: np.ndarray, close: np.ndarray, time: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each bar's range and move in units of its limit's ATR (the jump already divided by the time root), on the
    assumption that every bar is accepted: a bar is an outlier when a ratio exceeds max_atr. Vectorised, by chunks
    that stay in the cache: on a file of millions of bars a whole-column temporary is tens of megabytes."""
    n = len(high)
    range_ratio, jump = np.empty(n), np.empty(n)
    for a, r, j in _ratio_chunks(high, low, close, time):
        range_ratio[a:a + len(r)], jump[a:a + len(j)] = r, j
    return range_ratio, jump


def _outliers(high: np.ndarray, low: np.ndarray, close: np.ndarray, time: np.ndarray, max_atr: float) -> list[tuple[int, str]]:
    """(index, reason) of the outliers among these bars (finite, positive, in time order).

    The all-accepted ratios are exact up to the first bar they flag; from there the rule runs bar by bar on the
    accepted bars until 15 in a row are accepted (the ATR window and its previous closes are raw bars again), then
    the ratios are exact once more. Cost: the vector pass plus about 15 bars per outlier.
    """
    # Not `> max_atr`: a ratio that is NaN (an ATR window holding an overflowing bar) is looked at bar by bar too.
    flagged = [np.flatnonzero(~((r <= max_atr) & (j <= max_atr))) + a for a, r, j in _ratio_chunks(high, low, close, time)]
    flagged = np.concatenate(flagged) if flagged else np.zeros(0, np.intp)
    if len(flagged) == 0:
        return []
    n = len(high)
    warm_atr, warm_close = _warmup_reference(high, low, close)
    out: list[tuple[int, str]] = []
    i = int(flagged[0])
    while i < n:
        # State at bar i when every bar before it was accepted (true up to the first refusal after a clean stretch).
        trs: deque[float] = deque(maxlen=ATR_PERIOD)
        for j in range(max(0, i - ATR_PERIOD), i):
            pc = warm_close if j == 0 else float(close[j - 1])
            trs.append(max(float(high[j]), pc) - min(float(low[j]), pc) if j else float(high[j] - low[j]))
        accepted = i
        last = i - 1  # index of the last accepted bar
        clean = ATR_PERIOD + 1
        while i < n:
            pc = warm_close if last < 0 else float(close[last])
            atr = sum(trs) / ATR_PERIOD if accepted >= WARMUP else warm_atr
            atr = max(atr, ATR_FLOOR * pc)
            minutes = 1.0 if last < 0 else max(1.0, (int(time[i]) - int(time[last])) / 60.0)
            h, lo = float(high[i]), float(low[i])
            limit = max_atr * atr * math.sqrt(minutes)
            if h - lo > limit:
                out.append((i, "range_outlier"))
                clean = 0
            elif max(abs(h - pc), abs(lo - pc)) > limit:
                out.append((i, "jump_outlier"))
                clean = 0
            else:
                trs.append((max(h, pc) - min(lo, pc)) if last >= 0 else h - lo)
                accepted += 1
                last = i
                clean += 1
            i += 1
            if clean > ATR_PERIOD and accepted > WARMUP:
                break
        # Back in step with the all-accepted ratios: jump to the next bar they flag.
        later = flagged[flagged >= i]
        if len(later) == 0:
            break
        i = int(later[0])
    return out


# --- orders ------------------------------------------------------------------------------------------------------


def stops_problem(*, side: str, entry: float, sl: float | None, tp: float | None, atr: float | None,
                  max_atr: float) -> tuple[str | None, float | None]:
    """Why an order's stop or target is implausible, or None; and the further one's distance from the entry in ATRs.

    Refused: a stop or target that is not a finite positive price, on the wrong side of the entry (a long's stop
    below it, target above; a short's the other way), or further than `max_atr` x `atr` from it. Without an ATR
    (None or not positive) only the side and the price are checked.
    """
    direction = 1.0 if side == "buy" else -1.0
    distances = []
    for name, price, sign in (("sl", sl, -1.0), ("tp", tp, 1.0)):
        if price is None:
            continue
        if not (math.isfinite(price) and price > 0):
            return f"{name} {price} is not a price", None
        if sign * direction * (price - entry) <= 0:
            return f"{name} {price} must be {'above' if sign * direction > 0 else 'below'} the entry {entry}", None
        distances.append((name, abs(price - entry)))
    if not distances or atr is None or not (math.isfinite(atr) and atr > 0):
        return None, None
    name, far = max(distances, key=lambda d: d[1])
    far_atr = far / atr
    if far_atr > max_atr:
        return f"{name} is {far_atr:.3g} ATR from the entry", far_atr
    return None, far_atr


def market_order_problem(side: str, entry: float, sl: float | None, tp: float | None, bid: float, ask: float,
                         max_deviation: float) -> str | None:
    """Why a market order must not be sent at the broker's current quote, or None.

    Refused: a quote that is not a market (not finite and positive, or bid above ask); a stop or target on the wrong
    side of the price the position closes at (a long closes at the bid: sl < bid < tp; a short at the ask:
    tp < ask < sl); a signal entry further than `max_deviation` (a fraction, 0.02 = 2 %) from the price the order
    fills at (a long's ask, a short's bid).
    """
    if not all(math.isfinite(p) and p > 0 for p in (bid, ask)) or bid > ask:
        return f"no market: bid {bid}, ask {ask}"
    close_at, fill_at = (bid, ask) if side == "buy" else (ask, bid)
    direction = 1.0 if side == "buy" else -1.0
    if sl is not None and not (math.isfinite(sl) and direction * (close_at - sl) > 0):
        where = "below the bid" if side == "buy" else "above the ask"
        return f"sl {sl} must be {where} {close_at}"
    if tp is not None and not (math.isfinite(tp) and direction * (tp - close_at) > 0):
        where = "above the bid" if side == "buy" else "below the ask"
        return f"tp {tp} must be {where} {close_at}"
    if not math.isfinite(entry) or abs(entry - fill_at) > max_deviation * fill_at:
        return f"signal entry {entry} is more than {max_deviation:.2%} from the {'ask' if side == 'buy' else 'bid'} {fill_at}"
    return None
