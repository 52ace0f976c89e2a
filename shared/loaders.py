"""Load M1 bar files of every format users bring (MT5 rates CSV, MT5 "Export bars", MT4 history, Dukascopy, HistData,
any OHLCV text with a header) into `Bars`: detect the format, convert to UTC, report every rejected row with its line
number and reason."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from shared.bars import Bars
from shared.sanity import check_bars
from shared.settings import get_settings
from shared.timeutil import from_epoch, server_to_utc


class UnknownFormat(ValueError):
    """The file matches none of the known formats; the message says why."""


@dataclass(frozen=True, slots=True)
class LoadResult:
    bars: Bars
    format: str
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason), in file order
    dropped_flat: int = 0
    warnings: list[str] = field(default_factory=list)
    server_time: str = "utc"  # the broker-clock rule of the file (shared.timeutil.server_offset): broker-day boundaries
    zone: str = "utc"  # how the times were converted: a server_time rule, "stated" (offsets in the rows) or "tz:<IANA>"

    @property
    def rows(self) -> int:
        return len(self.bars)

    @property
    def first(self) -> datetime | None:
        return from_epoch(int(self.bars.time[0])) if len(self.bars) else None

    @property
    def last(self) -> datetime | None:
        return from_epoch(int(self.bars.time[-1])) if len(self.bars) else None

    @property
    def gaps(self) -> int:
        """Gaps longer than one bar between consecutive accepted bars."""
        return int(np.count_nonzero(np.diff(self.bars.time) > 60))

    def summary(self) -> dict:
        """What `scalper data check --json` prints."""
        return {
            "format": self.format,
            "rows": self.rows,
            "rejected": [{"line": line, "reason": reason} for line, reason in self.rejected],
            "dropped_flat": self.dropped_flat,
            "first": self.first.isoformat() if self.first else None,
            "last": self.last.isoformat() if self.last else None,
            "gaps": self.gaps,
            "warnings": list(self.warnings),
        }


# --- validation shared with the feeds ----------------------------------------------------------------------


def validate_bars(
    bars: Bars, *, previous_time: int | None = None, max_atr: float | None = None
) -> tuple[Bars, list[tuple[int, str]]]:
    """Split `bars` into the sound ones and (index, reason) for each rejected one: `shared.sanity.check_bars`, the one
    price-sanity rule, with the outlier limit `max_atr` (None: SCALPER_BAR_SANITY_ATR; math.inf: no outlier test)."""
    checked = check_bars(bars, max_atr=get_settings().bar_sanity_atr if max_atr is None else max_atr, previous_time=previous_time)
    return checked.bars, checked.rejected


# --- formats -----------------------------------------------------------------------------------------------
#
# Detection looks at the first non-blank line. A header names the columns (any case, `<>` around names allowed,
# separated by `,` `;` or tab); a first line of data means one of the header-less formats (MT4 history, HistData).
#
# | format        | looks like                                                     | time zone                         |
# |---------------|----------------------------------------------------------------|-----------------------------------|
# | mt5_rates_csv | `time,open,high,low,close,tick_volume,spread,real_volume`      | broker server time: not stated    |
# | mt5_export    | `<DATE>\t<TIME>\t<OPEN>...` or `date\ttime\topen...`           | broker server time: not stated    |
# | mt4_csv       | `2024.05.29,00:00,1.085,1.0852,1.0849,1.0851,25` (no header)   | broker server time: not stated    |
# | dukascopy     | `Local time,Open,High,Low,Close,Volume` / `Gmt time,...`       | stated: `GMT+0300` in each row    |
# | histdata      | `20240529 000000;1.085;1.0852;1.0849;1.0851;0` (no header)     | stated by the source: EST, UTC-5  |
# | generic       | any header with a time (or date + time) column and OHLC        | stated if the times carry offsets |

FORMAT_NAMES = ("mt5_rates_csv", "mt5_export", "mt4_csv", "dukascopy", "histdata", "generic")
HISTDATA_UTC_OFFSET_HOURS = -5.0  # histdata.com: "EST without daylight saving", all year

# Our column -> header names it may carry (normalised: lower case, `<>` stripped, inner spaces kept). First wins.
_ALIASES: dict[str, tuple[str, ...]] = {
    "datetime": ("time", "datetime", "date_time", "date time", "timestamp", "local time", "gmt time", "utc time",
                 "time (utc)", "timestamp (utc)", "open time", "open_time", "bar time", "gmt", "local"),
    "date": ("date", "day"),
    "time_of_day": ("time",),
    "open": ("open", "o", "open price", "bid open", "openbid"),
    "high": ("high", "h", "high price", "bid high", "highbid"),
    "low": ("low", "l", "low price", "bid low", "lowbid"),
    "close": ("close", "c", "close price", "bid close", "closebid"),
    "tick_volume": ("tick_volume", "tickvol", "tickvolume", "tick volume", "ticks", "volume", "vol", "v", "real_volume"),
    "spread": ("spread",),
}

_DELIMITERS = ("\t", ";", ",")


class _TimeParse:
    """A time-string shape: a regex and how to make an ISO string (and a stated UTC offset in seconds) from it."""

    def __init__(self, name: str, pattern: str, iso: Callable[[re.Match], str], offset: Callable[[re.Match], int] | None = None):
        self.name, self.regex, self.iso, self.offset = name, re.compile(pattern), iso, offset


def _frac(m: re.Match, group: str = "f") -> str:
    f = m.group(group)
    return f".{f}" if f else ""


def _sec(m: re.Match) -> str:
    return m.group("S") or "00"


def _tz_offset(m: re.Match) -> int:
    tz = m.group("tz")
    if tz in (None, "", "Z", "z"):
        return 0
    sign = -1 if tz[0] == "-" else 1
    digits = tz[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    return sign * (hours * 3600 + minutes * 60)


_HMS = r"(?P<H>\d{1,2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"

_TIME_SHAPES: tuple[_TimeParse, ...] = (
    # 2026-03-24 17:00:00, 2024.05.29 00:00, 2024/05/29T00:00:00.000 (year first)
    _TimeParse("ymd", r"(?P<y>\d{4})[-./](?P<m>\d{1,2})[-./](?P<d>\d{1,2})[ T]+" + _HMS + r"\s*$",
               lambda m: f"{m['y']}-{int(m['m']):02d}-{int(m['d']):02d}T{int(m['H']):02d}:{m['M']}:{_sec(m)}{_frac(m)}"),
    # the same with a stated zone: 2024-05-29T00:00:00Z, 2024-05-29 00:00:00+03:00, ... GMT+0300
    _TimeParse("ymd_tz", r"(?P<y>\d{4})[-./](?P<m>\d{1,2})[-./](?P<d>\d{1,2})[ T]+" + _HMS + r"\s*(?:GMT|UTC)?\s*(?P<tz>Z|z|[+-]\d{2}:?\d{2}|[+-]\d{2})\s*$",
               lambda m: f"{m['y']}-{int(m['m']):02d}-{int(m['d']):02d}T{int(m['H']):02d}:{m['M']}:{_sec(m)}{_frac(m)}", _tz_offset),
    # Dukascopy: 29.05.2024 00:00:00.000 GMT+0300 (day first)
    _TimeParse("dmy_tz", r"(?P<d>\d{1,2})[./-](?P<m>\d{1,2})[./-](?P<y>\d{4})[ T]+" + _HMS + r"\s*(?:GMT|UTC)\s*(?P<tz>[+-]\d{2}:?\d{2}|[+-]\d{2})?\s*$",
               lambda m: f"{m['y']}-{int(m['m']):02d}-{int(m['d']):02d}T{int(m['H']):02d}:{m['M']}:{_sec(m)}{_frac(m)}", _tz_offset),
    # 29.05.2024 00:00:00 (day first, no zone)
    _TimeParse("dmy", r"(?P<d>\d{1,2})[./-](?P<m>\d{1,2})[./-](?P<y>\d{4})[ T]+" + _HMS + r"\s*$",
               lambda m: f"{m['y']}-{int(m['m']):02d}-{int(m['d']):02d}T{int(m['H']):02d}:{m['M']}:{_sec(m)}{_frac(m)}"),
    # HistData: 20240529 000000
    _TimeParse("compact", r"(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})[ T]?(?P<H>\d{2})(?P<M>\d{2})(?P<S>\d{2})\s*$",
               lambda m: f"{m['y']}-{m['m']}-{m['d']}T{m['H']}:{m['M']}:{_sec(m)}"),
)


def _shape_of(sample: str) -> _TimeParse | str | None:
    """The shape the sample time string has: a _TimeParse, "epoch_s", "epoch_ms", or None."""
    s = sample.strip()
    if s.isdigit() and len(s) >= 9:
        return "epoch_ms" if len(s) >= 12 else "epoch_s"
    for shape in _TIME_SHAPES:
        if shape.regex.match(s):
            return shape
    return None


def _to_epoch(iso: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """ISO strings -> epoch seconds (fractions truncated) and a mask of the ones that are no real time."""
    try:
        return np.array(iso, dtype="datetime64[s]").astype(np.int64), np.zeros(len(iso), bool)
    except ValueError:
        pass
    out = np.zeros(len(iso), np.int64)
    bad = np.zeros(len(iso), bool)
    for i, s in enumerate(iso):
        try:
            out[i] = np.datetime64(s, "s").astype(np.int64)
        except ValueError:
            bad[i] = True
    return out, bad


def parse_times(strings: list[str]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, str | None]:
    """Time strings of one column -> (wall epoch seconds, stated UTC offsets in seconds or None, bad mask, shape).

    The shape is taken from the first non-blank string; a string of another shape is a bad time.
    """
    n = len(strings)
    sample = next((s for s in strings if s.strip()), "")
    shape = _shape_of(sample)
    if shape is None:
        return np.zeros(n, np.int64), None, np.ones(n, bool), None
    if shape in ("epoch_s", "epoch_ms"):
        values, bad = _parse_numbers([s.strip() for s in strings], np.int64)
        if shape == "epoch_ms":
            values = values // 1000
        return values, None, bad, shape
    if shape.name == "ymd":
        # Fast paths: numpy parses `YYYY-MM-DD HH:MM[:SS]` itself (the gold file's 63k rows in a few ms); other
        # separators (`2018.06.01 00:00:00`) are rewritten by slicing. A row that does not fit sends the whole column
        # down the regex path, which names each bad row.
        stripped = [s.strip() for s in strings]
        head = stripped[:1000]
        if all(len(s) in (16, 19) and s[4] == s[7] and s[4] in "-./" and s[10] in " T" for s in head):
            iso = stripped if head[0][4] == "-" else [f"{s[:4]}-{s[5:7]}-{s[8:10]}T{s[11:]}" for s in stripped]
            try:
                return np.array(iso, dtype="datetime64[s]").astype(np.int64), None, np.zeros(n, bool), shape.name
            except ValueError:
                pass
    iso: list[str] = []
    offsets = np.zeros(n, np.int64) if shape.offset else None
    bad = np.zeros(n, bool)
    match = shape.regex.match
    for i, s in enumerate(strings):
        m = match(s.strip())
        if m is None:
            iso.append("1970-01-01T00:00:00")
            bad[i] = True
            continue
        iso.append(shape.iso(m))
        if offsets is not None:
            offsets[i] = shape.offset(m)
    wall, bad_iso = _to_epoch(iso)
    return wall, offsets, bad | bad_iso, shape.name


def _parse_numbers(strings: list[str], dtype) -> tuple[np.ndarray, np.ndarray]:
    try:
        values = np.array(strings, dtype=np.float64)
        bad = np.zeros(len(strings), bool)
    except ValueError:
        values = np.empty(len(strings), np.float64)
        bad = np.zeros(len(strings), bool)
        for i, s in enumerate(strings):
            try:
                values[i] = float(s)
            except ValueError:
                values[i], bad[i] = 0.0, True
    if dtype is np.int64:
        bad |= ~np.isfinite(values)
        values = np.where(bad, 0, values).astype(np.int64)
    return values, bad


def _decode(raw: bytes, path: str | Path) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    if b"\x00" in raw[:4096]:
        raise UnknownFormat(f"{path} is not a text file (it holds NUL bytes): export the bars as CSV or text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _header_names(line: str, delimiter: str) -> list[str]:
    return [" ".join(n.strip().strip('"').strip().strip("<>").strip().lower().split()) for n in line.split(delimiter)]


def _delimiter_of(line: str) -> str | None:
    counts = {d: line.count(d) for d in _DELIMITERS}
    best = max(counts, key=counts.get)
    return best if counts[best] else None


_MT4_ROW = re.compile(r"^\d{4}\.\d{2}\.\d{2},\d{1,2}:\d{2}(:\d{2})?,")
_HISTDATA_ROW = re.compile(r"^\d{8} \d{6}[;,]")


@dataclass(frozen=True, slots=True)
class Layout:
    """How one file is read: its format name, separator, whether line 1 is a header, and our column -> field index."""

    format: str
    delimiter: str
    header: bool
    columns: dict[str, int]
    width: int


def _find(names: list[str], column: str, taken: set[int]) -> int | None:
    for alias in _ALIASES[column]:
        for i, name in enumerate(names):
            if name == alias and i not in taken:
                return i
    return None


def detect_layout(first_line: str) -> Layout:
    """Detect the format from the file's first non-blank line. Raises UnknownFormat saying why."""
    line = first_line.rstrip("\r\n").lstrip("\ufeff")
    if _MT4_ROW.match(line):
        width = line.count(",") + 1
        if width < 6:
            raise UnknownFormat(f"MT4 history row with {width} fields, expected date,time,open,high,low,close[,volume]")
        cols = {"date": 0, "time_of_day": 1, "open": 2, "high": 3, "low": 4, "close": 5}
        if width > 6:
            cols["tick_volume"] = 6
        return Layout("mt4_csv", ",", False, cols, width)
    if _HISTDATA_ROW.match(line):
        delimiter = line[15]
        width = line.count(delimiter) + 1
        if width < 5:
            raise UnknownFormat(f"HistData row with {width} fields, expected datetime;open;high;low;close[;volume]")
        # HistData's volume column is always 0: it says nothing about filler bars, so it is not read.
        return Layout("histdata", delimiter, False, {"datetime": 0, "open": 1, "high": 2, "low": 3, "close": 4}, width)

    delimiter = _delimiter_of(line)
    known = ", ".join(FORMAT_NAMES)
    if delimiter is None:
        raise UnknownFormat(f"first line {line.strip()[:120]!r} has no `,` `;` or tab separator; known formats: {known}")
    names = _header_names(line, delimiter)
    if any(ch.isdigit() for ch in names[0][:4]) and not any(c.isalpha() for c in "".join(names[1:])):
        raise UnknownFormat(
            f"first line {line.strip()[:120]!r} is data without a header and matches neither MT4 history "
            f"(YYYY.MM.DD,HH:MM,O,H,L,C,V) nor HistData (YYYYMMDD HHMMSS;O;H;L;C;V); add a header line "
            f"(time,open,high,low,close,volume); known formats: {known}"
        )
    cols: dict[str, int] = {}
    taken: set[int] = set()
    for column in ("open", "high", "low", "close", "tick_volume", "spread"):
        i = _find(names, column, taken)
        if i is not None:
            cols[column] = i
            taken.add(i)
    date_i = _find(names, "date", taken)
    if date_i is not None and _find(names, "time_of_day", taken | {date_i}) is not None:
        cols["date"] = date_i
        cols["time_of_day"] = _find(names, "time_of_day", taken | {date_i})
    else:
        i = _find(names, "datetime", taken)
        if i is None and date_i is not None:
            i = date_i  # a lone `date` column holding date and time
        if i is not None:
            cols["datetime"] = i
    missing = [c for c in ("open", "high", "low", "close") if c not in cols]
    if missing or not ({"datetime"} <= cols.keys() or {"date", "time_of_day"} <= cols.keys()):
        what = ", ".join(missing + ([] if ("datetime" in cols or "date" in cols) else ["time"]))
        raise UnknownFormat(f"header {line.strip()[:120]!r} lacks {what} column(s); known formats: {known}")

    if "date" in cols and delimiter == "\t":
        name = "mt5_export"
    elif "datetime" in cols and names[cols["datetime"]] in ("local time", "gmt time"):
        name = "dukascopy"
    elif names[cols.get("datetime", -1)] == "time" and delimiter == "," and {"tick_volume", "spread"} <= cols.keys():
        name = "mt5_rates_csv"
    else:
        name = "generic"
    return Layout(name, delimiter, True, cols, len(names))


def detect_format(header: str) -> str:
    """The format name a file with this first line is read as (raises UnknownFormat)."""
    return detect_layout(header).format


# --- the loader --------------------------------------------------------------------------------------------


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


def wall_to_utc(rule: str, wall: np.ndarray) -> np.ndarray:
    """Convert wall-clock epochs (read as if UTC) to UTC epochs: `server_to_utc`'s rules, or `tz:<IANA name>`.

    Offsets change only on whole hours, so every minute of a wall-clock hour shares the hour's offset: one
    conversion per distinct hour.
    """
    if len(wall) == 0:
        return wall
    hours, inverse = np.unique(wall // 3600 * 3600, return_inverse=True)
    offsets = np.array([_zone_offset(rule, int(h)) for h in hours], np.int64)
    return wall - offsets[inverse]


def load_m1(
    path: str | Path,
    *,
    utc_offset_hours: float | None = None,
    server_time: str | None = None,
    tz: str | None = None,
) -> LoadResult:
    """Read an M1 file of any supported format, convert its times to UTC, and keep every sound bar (oldest first).

    The zone: the offset each row states (Dukascopy, ISO times with an offset), HistData's fixed EST (UTC-5), or
    the one the caller gives (`utc_offset_hours`, `server_time` rule such as `us_dst`, or `tz` IANA name); a file
    that states none and is given none is read as UTC, with a warning. Raises UnknownFormat (a ValueError) saying
    why for a file no format recognises, and OSError for a file that cannot be read.
    """
    rule = _server_rule(utc_offset_hours, server_time, tz)
    warnings: list[str] = []
    raw = Path(path).read_bytes()
    lines = _decode(raw, path).split("\n")
    first_at = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first_at is None:
        raise UnknownFormat(f"{path} is empty")
    layout = detect_layout(lines[first_at])
    delimiter, width = layout.delimiter, layout.width

    rejected: list[tuple[int, str]] = []
    good: list[str] = []
    line_numbers: list[int] = []
    data_at = first_at + 1 if layout.header else first_at
    for n, line in enumerate(lines[data_at:], start=data_at + 1):
        line = line.rstrip("\r")
        if line.count(delimiter) == width - 1:
            good.append(line)
            line_numbers.append(n)
        elif line.strip():
            rejected.append((n, f"expected {width} fields, got {line.count(delimiter) + 1}"))
    # One split of the joined rows is several times faster than a split per row.
    flat = delimiter.join(good).split(delimiter) if good else []
    rows_count = len(good)
    cols = {column: flat[i::width] for column, i in layout.columns.items()}

    if "datetime" in cols:
        time_strings = cols["datetime"]
    else:
        time_strings = [f"{d.strip()} {t.strip()}" for d, t in zip(cols["date"], cols["time_of_day"])]
    wall, stated, bad, _shape = parse_times(time_strings)
    problems = {int(i): f"bad time {time_strings[i].strip()!r}" for i in np.flatnonzero(bad)}

    values = {}
    for column in ("open", "high", "low", "close", "tick_volume", "spread"):
        if column not in cols:
            values[column] = np.zeros(rows_count, np.float64 if column == "tick_volume" else np.int64)
            continue
        strings = cols[column]
        if strings and strings[0].lstrip().startswith('"'):
            strings = [s.strip().strip('"') for s in strings]  # quoted numbers (float() itself ignores whitespace)
        values[column], bad_number = _parse_numbers(strings, np.int64 if column == "spread" else np.float64)
        for i in np.flatnonzero(bad_number & ~bad):
            problems[int(i)] = f"bad {column} {cols[column][i].strip()!r}"
        bad |= bad_number
    rejected.extend((line_numbers[i], reason) for i, reason in problems.items())

    # The zone.
    if layout.format == "dukascopy" and stated is None:
        stated = np.zeros(rows_count, np.int64)  # "Gmt time" without a suffix is UTC
    if stated is not None:
        if rule is not None:
            warnings.append("the file states its UTC offset in every row: the offset or zone given was not used")
        utc_times = wall - stated
        rule = "stated"
    else:
        if rule is None and layout.format == "histdata":
            rule = f"{HISTDATA_UTC_OFFSET_HOURS:+g}"
        if rule is None:
            rule = "utc"
            warnings.append("the file states no time zone: times read as UTC (pass --utc-offset or --tz)")
        utc_times = None

    o, h, lo, c, vol = (values[k] for k in ("open", "high", "low", "close", "tick_volume"))
    # Filler bars (a closed market padded with flat zero-volume bars) can only be told when the file has volumes.
    has_volume = "tick_volume" in cols and bool(np.any(vol[~bad] != 0))
    filler = (o == h) & (h == lo) & (lo == c) & (vol == 0) & ~bad if has_volume else np.zeros(rows_count, bool)
    keep_idx = np.flatnonzero(~bad & ~filler)
    times = utc_times[keep_idx] if utc_times is not None else wall_to_utc(rule, wall[keep_idx])
    bars = Bars.from_columns(
        time=times,
        open=o[keep_idx], high=h[keep_idx], low=lo[keep_idx], close=c[keep_idx],
        tick_volume=np.rint(vol[keep_idx]).astype(np.int64),
        spread=values["spread"][keep_idx],
    )
    bars, bad_bars = validate_bars(bars)
    rejected.extend((line_numbers[keep_idx[i]], reason) for i, reason in bad_bars)
    rejected.sort()
    if rejected:
        warnings.append(f"{len(rejected)} rows rejected (first at line {rejected[0][0]}: {rejected[0][1]})")
    if rows_count and not len(bars):
        warnings.append("no usable bars")
    # Broker days are counted on the file's clock when it is a rule server_offset knows; else (offsets stated in the
    # rows, an IANA zone) on UTC, as paper accounts and backtests do by default (architecture.md, "Symbols and time").
    broker_rule = "utc" if rule == "stated" or rule.startswith("tz:") else rule
    return LoadResult(bars=bars, format=layout.format, rejected=rejected, dropped_flat=int(filler.sum()),
                      warnings=warnings, server_time=broker_rule, zone=rule)
