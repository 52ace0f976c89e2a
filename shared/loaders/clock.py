"""The file's clock: the rule its wall-clock times are read in (a fixed offset, `us_dst`, an IANA zone), its
conversion to UTC, and the rule inferred from the file's weekly close and daily break."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from shared.timeutil import from_epoch, nth_sunday, server_offset, server_to_utc


def _server_rule(utc_offset_hours: float | None, server_time: str | None, tz: str | None) -> str | None:
    given = [x for x in (utc_offset_hours, server_time, tz) if x is not None]
    if len(given) > 1:
        raise ValueError("give one of utc_offset_hours, server_time or tz, not both")
    if utc_offset_hours is not None:
        return f"{float(utc_offset_hours):+g}"
    if tz is not None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {tz!r}: use an IANA name such as Europe/Athens or America/New_York") from None
        return f"tz:{tz}"
    return server_time


def _zone_offset(rule: str, hour_epoch: int) -> int:
    """Seconds the wall clock of `rule` is ahead of UTC at the wall-clock hour `hour_epoch` (read as if UTC)."""
    if rule.startswith("tz:"):
        # A wall time that a DST switch skips or repeats takes the offset before the switch (fold=0).
        wall = datetime.fromtimestamp(hour_epoch, UTC).replace(tzinfo=ZoneInfo(rule[3:]))
        return int(wall.utcoffset().total_seconds())
    return hour_epoch - int(server_to_utc(rule, from_epoch(hour_epoch).replace(tzinfo=None)).timestamp())


def wall_to_utc(rule: str, wall: np.ndarray, *, in_place: bool = False) -> np.ndarray:
    """Convert wall-clock epochs (read as if UTC) to UTC epochs: `server_to_utc`'s rules, or `tz:<IANA name>`.

    The rules server_offset knows are computed on the whole array (`rule_offsets`), or, on sorted times, once per
    stretch of constant offset (`_offset_runs`); an IANA zone's offsets change only on whole hours, so every minute of
    a wall-clock hour shares the hour's offset: one conversion per hour. `in_place`: `wall` itself is converted (an
    int64 array the caller owns) and returned.
    """
    if len(wall) == 0:
        return wall
    if not rule.startswith("tz:"):
        runs = _offset_runs(rule, wall)
        if runs is None:
            offsets = rule_offsets(rule, wall)
            return np.subtract(wall, offsets, out=wall) if in_place else wall - offsets
        out = wall if in_place else wall.copy()
        for a, b, offset in runs:
            out[a:b] -= offset
        return out
    hours, inverse = np.unique(wall // 3600 * 3600, return_inverse=True)
    offsets = np.array([_zone_offset(rule, int(h)) for h in hours], np.int64)
    return wall - offsets[inverse]


# --- the broker's clock, inferred --------------------------------------------------------------------------
#
# FX and metals trade in sessions anchored on New York: the week closes Friday 17:00 New York time and gold's daily
# break starts at 17:00 New York time too (21:00 UTC while the US keeps summer time, 22:00 UTC in winter). A file's
# session ends (the close of the last bar before a break of 40 minutes or more) therefore sit at one wall-clock time
# of day under the right rule, and the rule is the one under which most of them fall on 17:00 New York. Openings are
# no evidence: FX opens at 17:00 and gold at 18:00 New York, so they cannot tell one hour from the next.

CANDIDATES = ("utc", "us_dst", *(f"{h:+d}" for h in range(-12, 15) if h))  # the rules server_offset knows
INFER_MIN_CONFIDENCE = 0.6  # below it the file is read as UTC and the warning says what was seen
_DAILY_MIN_S, _DAILY_MAX_S, _WEEKLY_MIN_S = 40 * 60, 6 * 3600, 24 * 3600
_EARLY_S, _LATE_S = 30 * 60, 10 * 60  # a session may end up to 30 minutes before 17:00 New York, or 10 after
_WEEKLY_WEIGHT = 3  # one weekly close says as much as three daily breaks (FX has no daily break at all)
_CHUNK = 1 << 16  # times per chunk of the gap scan
_PRIOR = 3  # evidence weight that brings confidence to one half: one weekly close alone is not enough


@dataclass(frozen=True, slots=True)
class ClockGuess:
    """What the file's session ends say about its clock."""

    rule: str  # the best-fitting rule (a CANDIDATES name)
    confidence: float  # 0-1: share of session ends it explains, discounted when they are few
    weekly: int  # weekly closes seen
    daily: int  # daily breaks seen
    matched: int  # of those, how many fall on 17:00 New York under `rule`

    def describe(self) -> str:
        return (f"{self.matched} of {self.weekly + self.daily} session ends ({self.weekly} weekly closes, {self.daily} daily "
                f"breaks) fall on 17:00 New York time under {self.rule} (confidence {self.confidence:.2f})")


def us_dst_offset(utc: np.ndarray) -> np.ndarray:
    """`server_offset("us_dst", t)` in seconds for an array of UTC epochs, vectorised over the DST switch instants."""
    if len(utc) == 0:
        return np.zeros(0, np.int64)
    years = range(from_epoch(int(utc.min()) - 86_400).year, from_epoch(int(utc.max()) + 86_400).year + 1)
    switches = []
    for y in years:
        switches.append(int(datetime.combine(nth_sunday(y, 3, 2), time(7), UTC).timestamp()))
        switches.append(int(datetime.combine(nth_sunday(y, 11, 1), time(6), UTC).timestamp()))
    switches = np.array(switches, np.int64)
    if len(utc) > 1 and bool(np.all(utc[1:] >= utc[:-1])):
        # Sorted times (every sound file): the offset is constant between switches, one run per season.
        cuts = np.searchsorted(utc, switches, side="left")
        seasons = np.diff(np.concatenate(([0], cuts, [len(utc)])))
        per_season = np.where(np.arange(len(seasons)) % 2 == 1, 3 * 3600, 2 * 3600).astype(np.int64)
        return np.repeat(per_season, seasons)
    summer = np.searchsorted(switches, utc, side="right") % 2 == 1
    return np.where(summer, 3 * 3600, 2 * 3600).astype(np.int64)


def _offset_runs(rule: str, wall: np.ndarray) -> list[tuple[int, int, int]] | None:
    """(start, end, offset) of the stretches of sorted `wall` over which `rule_offsets` is constant, each offset
    computed by `rule_offsets` itself on the stretch's first time; None for times not in order (or a zone rule).

    us_dst's offset at wall time w is S(w - S(w)), S the season step of `us_dst_offset`, whose steps are the DST switch
    instants: so it can change only where w crosses a switch, or a switch plus two or three hours."""
    key = rule.strip().lower()
    if key != "us_dst":
        if key.startswith("tz:"):
            return None
        return [(0, len(wall), int(rule_offsets(rule, wall[:1])[0]))]
    if len(wall) > 1 and not bool(np.all(wall[1:] >= wall[:-1])):
        return None
    years = range(from_epoch(int(wall[0]) - 2 * 86_400).year, from_epoch(int(wall[-1]) + 2 * 86_400).year + 1)
    switches = []
    for y in years:
        switches.append(int(datetime.combine(nth_sunday(y, 3, 2), time(7), UTC).timestamp()))
        switches.append(int(datetime.combine(nth_sunday(y, 11, 1), time(6), UTC).timestamp()))
    steps = np.unique(np.concatenate([np.array(switches, np.int64) + shift for shift in (0, 2 * 3600, 3 * 3600)]))
    cuts = np.unique(np.concatenate(([0], np.searchsorted(wall, steps, side="left"), [len(wall)])))
    starts, ends = cuts[:-1], cuts[1:]
    offsets = rule_offsets(rule, wall[starts])
    return [(int(a), int(b), int(o)) for a, b, o in zip(starts, ends, offsets, strict=True) if b > a]


def rule_offsets(rule: str, wall: np.ndarray) -> np.ndarray:
    """Seconds the clock of `rule` is ahead of UTC at each wall-clock epoch (`wall - wall_to_utc(rule, wall)`)."""
    rule = rule.strip().lower() if not rule.startswith("tz:") else rule
    if rule == "us_dst":
        guess = wall - us_dst_offset(wall)
        return us_dst_offset(guess)
    if rule.startswith("tz:"):
        return wall - wall_to_utc(rule, wall)
    return np.full(len(wall), int(server_offset(rule, from_epoch(0)).total_seconds()), np.int64)


def session_ends(wall: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(close epochs of the last bar before each weekly or daily break, whether each is weekly), on the file's clock."""
    ats, gaps = [], []
    for a in range(0, max(len(wall) - 1, 0), _CHUNK):  # by chunks: no array of millions of gaps
        b = min(a + _CHUNK, len(wall) - 1)
        gap = wall[a + 1:b + 1] - wall[a:b]
        at = np.flatnonzero(gap >= _DAILY_MIN_S)
        ats.append(at + a)
        gaps.append(gap[at])
    at = np.concatenate(ats) if ats else np.zeros(0, np.intp)
    gap = np.concatenate(gaps) if gaps else np.zeros(0, np.int64)
    weekly = gap >= _WEEKLY_MIN_S
    keep = weekly | (gap <= _DAILY_MAX_S)
    return wall[at[keep]] + 60, weekly[keep]


def _on_anchor(utc: np.ndarray) -> np.ndarray:
    """Whether each UTC instant is within the tolerance of 17:00 New York time (00:00 on a us_dst server clock)."""
    since = (utc + us_dst_offset(utc)) % 86_400  # seconds after 00:00 us_dst == 17:00 New York
    return (since <= _LATE_S) | (since >= 86_400 - _EARLY_S)


def infer_clock(wall: np.ndarray) -> ClockGuess:
    """The rule under which the file's session ends fall on 17:00 New York time, with a confidence.

    A rule equivalent to us_dst on this file (a fixed +3 on summer-only data) reads it the same; us_dst, what most
    brokers run, is then named, being listed before the fixed offsets."""
    ends, weekly = session_ends(np.asarray(wall, np.int64))
    weights = np.where(weekly, _WEEKLY_WEIGHT, 1)
    total = int(weights.sum())
    best, best_score, best_hits = "utc", -1, 0
    for rule in CANDIDATES:
        hits = _on_anchor(ends - rule_offsets(rule, ends))
        score = int(weights[hits].sum())
        if score > best_score:
            best, best_score, best_hits = rule, score, int(hits.sum())
    if total == 0:
        return ClockGuess("utc", 0.0, 0, 0, 0)
    share = best_score / total
    confidence = share * best_score / (best_score + _PRIOR)
    return ClockGuess(best, round(confidence, 3), int(weekly.sum()), int((~weekly).sum()), best_hits)


def same_reading(rule_a: str, rule_b: str, wall: np.ndarray) -> bool:
    """Whether two rules give the same UTC times for this file (checked at its session ends, first and last bar)."""
    if len(wall) == 0:
        return True
    ends, _ = session_ends(wall)
    probe = np.concatenate([ends, wall[:1], wall[-1:]]).astype(np.int64)
    return bool(np.array_equal(rule_offsets(rule_a, probe), rule_offsets(rule_b, probe)))


def rule_flag(rule: str) -> str:
    """The command-line option that reads a file with `rule`."""
    if rule.startswith("tz:"):
        return f"--tz {rule[3:]}"
    if rule in ("utc", "us_dst"):
        return f"--server-time {rule}"
    return f"--utc-offset {float(rule):g}"
