"""Time shapes: what one file's time strings look like (`YYYY.MM.DD HH:MM`, `DD/MM/YYYY`, `YYYYMMDD HHMMSS`, epoch
seconds or milliseconds, ISO with an offset ...), their parsing by pandas with an exact format, and the day/month
order decided by the file's own values."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_DATE_RE = re.compile(r"(?P<ymd>\d{4}(?P<s1>[-./])\d{1,2}(?P=s1)\d{1,2})|(?P<xy>\d{1,2}(?P<s2>[-./])\d{1,2}(?P=s2)\d{4})|(?P<c>\d{8})")
_TIME_RE = re.compile(r"(?P<sep>[ T]*)(?P<t>\d{1,2}:\d{2}(?::\d{2}(?P<f>\.\d+)?)?|\d{6}|\d{4})")
_ZONE_RE = re.compile(r"(?P<lit>\s*(?:GMT|UTC)?\s*)(?P<tz>Z|z|[+-]\d{2}:?\d{2})?\s*$")


@dataclass(frozen=True, slots=True)
class TimeShape:
    """How one file's time strings are parsed: epoch seconds or milliseconds, or strptime formats tried in turn.

    `orders` holds one format list per reading of the date: two when day and month could be either way round
    (`DD/MM/YYYY` or `MM/DD/YYYY`), and the file's own values decide (`load_m1`)."""

    name: str  # "epoch_s", "epoch_ms", or the date's shape: "YYYY.MM.DD", "DD.MM.YYYY", "YYYYMMDD" ...
    orders: tuple[tuple[str, ...], ...] = ()
    order_names: tuple[str, ...] = ()
    stated: bool = False  # the strings carry their UTC offset (or say GMT/UTC/Z)
    width: int | None = None  # digits without separators (`YYYYMMDD`, `HHMMSS`): every string has the sample's length


def _time_formats(sample: str, date_fmt: str, rest: str) -> tuple[tuple[str, ...], bool] | None:
    m = _TIME_RE.match(rest)
    if m is None:
        return None
    t = m["t"]
    if ":" in t:
        variants = ["%H:%M:%S.%f", "%H:%M:%S", "%H:%M"] if m["f"] else (["%H:%M:%S", "%H:%M", "%H:%M:%S.%f"]
                                                                      if t.count(":") == 2 else ["%H:%M", "%H:%M:%S", "%H:%M:%S.%f"])
    else:
        variants = ["%H%M%S"] if len(t) == 6 else ["%H%M"]
    z = _ZONE_RE.match(rest, m.end())
    if z is None:
        return None
    lit = z["lit"].replace("%", "%%")
    stated = bool(z["tz"]) or "GMT" in lit or "UTC" in lit
    zone = lit + ("%z" if z["tz"] else "")
    sep = m["sep"] or ""
    return tuple(f"{date_fmt}{sep}{v}{zone}" for v in variants), stated


def time_shape(sample: str, *, day_first: bool | None = None) -> TimeShape | None:
    """The shape of one time string (date and time joined by a space when they come in two columns), or None."""
    s = sample.strip().strip('"')
    if s.isdigit() and 9 <= len(s) <= 13:
        return TimeShape("epoch_ms" if len(s) >= 12 else "epoch_s")
    d = _DATE_RE.match(s)
    if d is None:
        return None
    rest = s[d.end():]
    if d["ymd"]:
        sep = d["s1"]
        dates, names = [f"%Y{sep}%m{sep}%d"], [f"YYYY{sep}MM{sep}DD"]
    elif d["c"]:
        dates, names = ["%Y%m%d"], ["YYYYMMDD"]
    else:
        sep = d["s2"]
        dmy, mdy = (f"%d{sep}%m{sep}%Y", f"DD{sep}MM{sep}YYYY"), (f"%m{sep}%d{sep}%Y", f"MM{sep}DD{sep}YYYY")
        # `.` is the day-first convention; `/` and `-` are read either way until the values decide.
        pair = [dmy, mdy] if day_first is not False and (day_first or sep == ".") else [mdy, dmy]
        if day_first is not None:
            pair = pair[:1]
        dates, names = [p[0] for p in pair], [p[1] for p in pair]
    orders, stated = [], False
    tm = _TIME_RE.match(rest)
    fixed = d["c"] is not None or (tm is not None and ":" not in tm["t"])
    for date_fmt in dates:
        got = _time_formats(s, date_fmt, rest)
        if got is None:
            return None
        orders.append(got[0])
        stated = got[1]
    return TimeShape(names[0], tuple(orders), tuple(names), stated, len(s) if fixed else None)


def _epoch_seconds(pd, strings, shape: TimeShape) -> tuple[np.ndarray, np.ndarray]:
    values = pd.to_numeric(strings, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values) | (values != np.floor(values))
    out = np.where(bad, 0, values).astype(np.int64)
    return (out // 1000 if shape.name == "epoch_ms" else out), bad


def _parse_formats(pd, strings, shape: TimeShape, order: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Strings -> epoch seconds (UTC when stated, else wall clock read as UTC; fractions truncated) and a bad mask."""
    formats, stated = shape.orders[order], shape.stated
    if shape.width is not None:  # strptime reads `1201` as 12:00:01 for %H%M%S: digits-only shapes keep their length
        strings = strings.where(strings.str.len() == shape.width, "")
    parsed = pd.to_datetime(strings, format=formats[0], errors="coerce", utc=stated)
    missing = parsed.isna().to_numpy()
    for fmt in formats[1:]:
        if not missing.any():
            break
        again = pd.to_datetime(strings[missing], format=fmt, errors="coerce", utc=stated)
        parsed = parsed.where(~missing, again.reindex(parsed.index))
        missing = parsed.isna().to_numpy()
    if stated:
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    values = parsed.to_numpy(dtype="datetime64[us]").astype("datetime64[s]").astype(np.int64)
    return np.where(missing, 0, values), missing


def parse_times(strings: list[str], shape: TimeShape | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, str | None]:
    """Time strings of one column -> (wall epoch seconds, stated UTC offsets in seconds or None, bad mask, shape name).

    The shape is taken from the first non-blank string unless given; a string of no format of that shape is a bad time.
    Stated offsets come back applied: the epochs are UTC and the offsets zero."""
    import pandas as pd

    series = pd.Series(strings, dtype=object).astype(str).str.strip()
    if shape is None:
        shape = time_shape(next((s for s in series if s), ""))
    n = len(series)
    if shape is None:
        return np.zeros(n, np.int64), None, np.ones(n, bool), None
    if shape.name.startswith("epoch"):
        values, bad = _epoch_seconds(pd, series, shape)
        return values, None, bad, shape.name
    values, bad = _parse_formats(pd, series, shape)
    return values, (np.zeros(n, np.int64) if shape.stated else None), bad, shape.name


def _day_month_order(candidates, shape: TimeShape) -> tuple[int, str]:
    """Day first or month first: the reading under which fewer times are impossible, then the one whose bars move
    least back and forth in time (a wrong reading jumps a month at each day change)."""
    scores = []
    for wall, bad in candidates:
        ok = wall[~bad]
        scores.append((int(bad.sum()), int(np.abs(np.diff(ok)).sum()) if len(ok) > 1 else 0))
    pick = 0 if scores[0] <= scores[1] else 1
    other = 1 - pick
    if scores[pick][0] < scores[other][0]:
        why = f"{scores[other][0]} dates are impossible as {shape.order_names[other]}"
    elif scores[pick][1] < scores[other][1]:
        why = f"as {shape.order_names[other]} the bars would jump back and forth in time"
    else:
        why = f"the values fit both readings; {shape.order_names[pick]} is the convention for this separator"
    return pick, f"dates read as {shape.order_names[pick]}: {why}"
