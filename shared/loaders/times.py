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


# --- fixed-width times, straight from the bytes -------------------------------------------------------------
#
# The fast path (`rows.read_rows_arrow`) hands over each batch's time column as the raw bytes of equal-length
# strings. When the shape's first format is made only of fixed-width numbers (%Y, %m, %d, %H, %M, %S) and literal
# ASCII characters, a string is in canonical form when every literal sits at its place and every number position
# holds a digit: such a string has one reading, the one pandas' exact-format parse gives it, and numpy reads it by
# position (one subtraction, one comparison and one small matrix product per batch). A string not in that form is
# left to pandas (the caller falls back); one in that form but naming no real time (month 13, February 30, hour 24)
# is flagged here, and its verdict is pandas' too.

_FIXED_WIDTHS = {"Y": 4, "m": 2, "d": 2, "H": 2, "M": 2, "S": 2}
_YEARS = (1900, 2200)  # a year outside is left to pandas: no M1 file holds one, and its bounds are pandas' to say
_NOT_DIGITS = 255


@dataclass(frozen=True, slots=True, eq=False)
class FixedFormat:
    width: int  # bytes of every string
    literal_at: np.ndarray  # byte positions of the literal characters
    literals: np.ndarray  # (uint8) the literal characters
    pairs: dict[str, tuple[int, ...]]  # directive letter -> byte position of each of its two-digit groups


def fixed_format(fmt: str) -> FixedFormat | None:
    """The byte layout of a strptime format of fixed-width numbers and ASCII literals, or None for any other."""
    at, literals, pairs, pos, i = [], [], {}, 0, 0
    while i < len(fmt):
        ch = fmt[i]
        if ch == "%" and i + 1 < len(fmt) and fmt[i + 1] in _FIXED_WIDTHS and fmt[i + 1] not in pairs:
            width = _FIXED_WIDTHS[fmt[i + 1]]
            pairs[fmt[i + 1]] = tuple(range(pos, pos + width, 2))
            pos += width
            i += 2
            continue
        if ch == "%" and fmt[i + 1:i + 2] == "%":
            i += 1
        elif ch == "%" or ord(ch) > 127:
            return None
        at.append(pos)
        literals.append(ord(ch))
        pos += 1
        i += 1
    return FixedFormat(pos, np.array(at, np.intp), np.array(literals, np.uint8), pairs)


_TABLES: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(two bytes read as one little-endian uint16 -> their value 0-99, or _NOT_DIGITS; epoch day of each month's
    first day and the days in it, for the months of _YEARS, indexed by (year - first year) * 12 + month - 1)."""
    global _TABLES
    if _TABLES is None:
        pair = np.full(1 << 16, _NOT_DIGITS, np.uint8)
        tens, ones = np.divmod(np.arange(100), 10)
        pair[(ones + 48) * 256 + tens + 48] = np.arange(100)  # the first byte (tens) is the low one
        months = np.arange(np.datetime64(f"{_YEARS[0]}-01", "M"), np.datetime64(f"{_YEARS[1] + 1}-02", "M"))
        first = months.astype("datetime64[D]").astype(np.int64)
        _TABLES = pair, first[:-1], np.diff(first).astype(np.uint8)
    return _TABLES


def fixed_epochs(matrices: list[np.ndarray], formats: list[FixedFormat]) -> tuple[np.ndarray, np.ndarray] | None:
    """(epoch seconds, a mask of the rows naming no real time) of (rows, width) uint8 matrices, one per time column
    (the date and the time of day may come apart), or None unless every row is in canonical form."""
    pair, first, days_in = _tables()
    n = len(matrices[0])
    got: dict[str, np.ndarray] = {}
    for matrix, fmt in zip(matrices, formats, strict=True):
        if len(fmt.literal_at) and not (matrix[:, fmt.literal_at] == fmt.literals).all():
            return None
        for d, groups in fmt.pairs.items():
            parts = [pair[matrix[:, g:g + 2].view("<u2")[:, 0]] for g in groups]  # uint8 values 0-99
            if any(int(p.max(initial=0)) == _NOT_DIGITS for p in parts):
                return None
            got[d] = parts[0] if len(parts) == 1 else parts[0].astype(np.int32) * 100 + parts[1]
    # Narrow types while checking (a month or an hour is one byte), int64 only for the epochs themselves.
    year = got["Y"] if "Y" in got else np.full(n, 1900, np.int32)
    month = got["m"] if "m" in got else np.ones(n, np.uint8)
    day = got["d"] if "d" in got else np.ones(n, np.uint8)
    zero = np.zeros(n, np.uint8)
    hour, minute, second = got.get("H", zero), got.get("M", zero), got.get("S", zero)
    invalid = (year < _YEARS[0]) | (year > _YEARS[1]) | (month - np.uint8(1) > 11) | (day == 0) | (hour > 23)
    invalid |= (minute > 59) | (second > 59)
    at = (year - _YEARS[0]) * 12 + month.astype(np.int32) - 1
    at[invalid] = 0
    invalid |= day > days_in[at]
    epochs = first[at]
    epochs += day
    epochs -= 1
    epochs *= 86_400
    epochs += hour.astype(np.int32) * 3600 + minute.astype(np.int32) * 60 + second
    epochs[invalid] = 0
    return epochs, invalid
