"""Load M1 bar files of every format users bring (MT5 rates CSV, MT5 "Export bars", MT4 history, Dukascopy, HistData,
any OHLCV text with or without a header) into `Bars`: detect the format, convert to UTC, report every rejected row with
its line number and reason.

The rows are read by pandas' C parser in chunks (pandas is imported here, lazily, only when a file is read); a numpy
pass over the raw bytes first finds each line's length and field count, so a wrong row or an over-long line is named
by its line number without pandas ever holding it."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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
    suggestion: str | None = None  # what to do when the file gave no usable bar

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
            "suggestion": self.suggestion,
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
# separated by `,` `;` tab `|` or spaces); a first line of data is read by position: the time (one column, or date
# and time), open, high, low, close, then optional volumes (MT4 history, HistData, or generic).
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

_DELIMITERS = ("\t", ";", ",", "|")
WHITESPACE = " "  # Layout.delimiter for fields separated by runs of spaces or tabs
MAX_LINE_BYTES = 4096  # a longer line is no M1 row: refused by its line number, never read whole
_SNIFF_BYTES = 64 * 1024  # detection reads this much of the file's start
_SCAN_BYTES = 1 << 20  # the byte scan's block
_CHUNK_ROWS = 200_000  # rows per pandas chunk: memory stays bounded on files of any length
_NA = ["nan", "NaN", "NAN", "-nan", "-NaN"]  # read as NaN (the price check names them); any other text is a bad number


# --- time shapes -------------------------------------------------------------------------------------------

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


# --- text: encodings, whole-line quotes ---------------------------------------------------------------------


def _is_text(text: str) -> bool:
    controls = sum(1 for ch in text[:4096] if ord(ch) < 32 and ch not in "\t\r\n")
    return controls == 0


def _encoding_of(head: bytes, path: str | Path) -> str:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    if b"\x00" in head[:4096]:
        even, odd = head[0:4096:2], head[1:4096:2]
        for enc, zeros in (("utf-16-le", odd), ("utf-16-be", even)):
            if zeros and zeros.count(0) == len(zeros) and _is_text(head[:4096].decode(enc, errors="replace")):
                return enc
        raise UnknownFormat(f"{path} is not a text file (it holds NUL bytes): export the bars as CSV or text")
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    try:
        cut = head.rfind(b"\n") if len(head) >= _SNIFF_BYTES else len(head)
        head[: cut if cut > 0 else len(head)].decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        return "latin-1"


def _wrapped_in_quotes(lines: list[str]) -> bool:
    """Every line one quoted string (`"2024.05.29\t00:00\t1.1..."`): the quotes wrap the line, not its fields."""
    body = [line.strip() for line in lines if line.strip()]
    return bool(body) and all(
        len(s) > 2 and s[0] == '"' and s[-1] == '"' and '"' not in s[1:-1].replace('""', "") for s in body
    )


def _unquote_line(line: str) -> str:
    s = line.rstrip("\r")
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        s = s[1:-1].rstrip("\r").replace('""', '"')
    return s


@contextmanager
def _utf8_copy(path: Path, encoding: str, unquote: bool) -> Iterator[Path]:
    """A temporary UTF-8 copy of the file, line for line (so line numbers hold), decoded and/or unquoted by blocks."""
    fd, name = tempfile.mkstemp(prefix="m1-", suffix=".txt")
    try:
        with open(path, encoding=encoding, errors="replace", newline="") as src, os.fdopen(fd, "w", encoding="utf-8", newline="") as dst:
            carry = ""
            while block := src.read(_SCAN_BYTES):
                text = carry + block
                cut = text.rfind("\n")
                if cut < 0 and len(text) < 4 * MAX_LINE_BYTES:
                    carry = text
                    continue
                done, carry = (text[: cut + 1], text[cut + 1 :]) if cut >= 0 else (text, "")
                if unquote:
                    done = "\n".join(_unquote_line(line) for line in done.split("\n"))
                dst.write(done.lstrip("\ufeff") if dst.tell() == 0 else done)
            if carry:
                dst.write(_unquote_line(carry) if unquote else carry)
        yield Path(name)
    finally:
        os.unlink(name)


# --- the layout --------------------------------------------------------------------------------------------


def _header_names(line: str, delimiter: str) -> list[str]:
    return [" ".join(n.strip().strip('"').strip().strip("<>").strip().lower().split()) for n in _split(line, delimiter)]


def _split(line: str, delimiter: str) -> list[str]:
    line = line.rstrip("\r\n")
    return line.split() if delimiter == WHITESPACE else line.split(delimiter)


def _delimiter_of(line: str) -> str | None:
    counts = {d: line.count(d) for d in _DELIMITERS}
    best = max(counts, key=counts.get)
    if counts[best]:
        return best
    return WHITESPACE if len(line.split()) > 1 else None


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


def _is_number(s: str) -> bool:
    try:
        float(s.strip().strip('"'))
        return True
    except ValueError:
        return False


def _data_layout(line: str, delimiter: str) -> Layout | None:
    """A first line of data read by position: time, open, high, low, close, then optional volumes; None if not data."""
    fields = [f.strip().strip('"') for f in _split(line, delimiter)]
    cols: dict[str, int] = {}
    if len(fields) >= 2 and (shape := time_shape(f"{fields[0]} {fields[1]}")) is not None and not shape.name.startswith("epoch") \
            and time_shape(fields[0]) is None:
        cols.update(date=0, time_of_day=1)
    elif fields and (shape := time_shape(fields[0])) is not None:
        cols["datetime"] = 0
    else:
        return None
    at = len(cols)
    rest = fields[at:]
    if len(rest) < 4 or not all(_is_number(f) for f in rest[:4]):
        known = ", ".join(FORMAT_NAMES)
        raise UnknownFormat(
            f"first line {line.strip()[:120]!r} is data without a header but has {len(rest)} fields after the time "
            f"where open, high, low, close are expected; add a header line (time,open,high,low,close,volume); "
            f"known formats: {known}"
        )
    cols.update(open=at, high=at + 1, low=at + 2, close=at + 3)
    extra = len(rest) - 4
    if extra >= 1:
        cols["tick_volume"] = at + 4
    if extra == 3:  # MT5 export order (tickvol, vol, spread) after date and time; rates order (tick, spread, real) after one time
        cols["spread"] = at + 6 if "date" in cols else at + 5
    if shape.name == "YYYYMMDD" and "datetime" in cols:
        # HistData's volume column is always 0: it says nothing about filler bars, so it is not read.
        cols.pop("tick_volume", None)
        cols.pop("spread", None)
        name = "histdata"
    elif "date" in cols and shape.name == "YYYY.MM.DD":
        name = "mt4_csv"
    else:
        name = "generic"
    return Layout(name, delimiter, False, cols, len(fields))


def detect_layout(first_line: str) -> Layout:
    """Detect the format from the file's first non-blank line. Raises UnknownFormat saying why."""
    line = first_line.rstrip("\r\n").lstrip("\ufeff")
    known = ", ".join(FORMAT_NAMES)
    delimiter = _delimiter_of(line)
    if delimiter is None:
        raise UnknownFormat(f"first line {line.strip()[:120]!r} has no `,` `;` `|` tab or space separator; known formats: {known}")
    data = _data_layout(line, delimiter)
    if data is not None:
        return data
    names = _header_names(line, delimiter)
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


# --- the byte scan -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Lines:
    starts: np.ndarray  # byte offset of each line
    lengths: np.ndarray  # bytes, without the line end
    fields: np.ndarray  # fields on the line (0 for a blank line)


def _scan_lines(path: Path, delimiter: str) -> _Lines:
    """Each line's offset, length and field count, by blocks with numpy: no line is ever held as a string."""
    sep = None if delimiter == WHITESPACE else ord(delimiter)
    ends_parts, count_parts, cr_parts = [], [], []
    carry_count = 0  # marks on the line the previous block ended inside
    prev_space, prev_byte = True, 0
    pos = 0
    with open(path, "rb") as f:
        while block := f.read(_SCAN_BYTES):
            a = np.frombuffer(block, np.uint8)
            nl = np.flatnonzero(a == 10)
            if sep is None:
                space = (a == 32) | (a == 9) | (a == 13) | (a == 10)
                marks = ~space
                marks[1:] &= space[:-1]
                marks[0] &= prev_space
                prev_space = bool(space[-1])
                marks = np.flatnonzero(marks)
            else:
                marks = np.flatnonzero(a == sep)
            per_line = np.bincount(np.searchsorted(nl, marks), minlength=len(nl) + 1)
            per_line[0] += carry_count
            count_parts.append(per_line[:-1])
            carry_count = int(per_line[-1])
            before = np.where(nl > 0, a[np.maximum(nl - 1, 0)], prev_byte)
            cr_parts.append(before == 13)  # a CR LF line end: the CR is no part of the line
            prev_byte = int(a[-1])
            ends_parts.append(nl + pos)
            pos += len(block)
    ends = np.concatenate(ends_parts) if ends_parts else np.zeros(0, np.int64)
    counts = np.concatenate(count_parts) if count_parts else np.zeros(0, np.int64)
    has_cr = np.concatenate(cr_parts) if cr_parts else np.zeros(0, bool)
    if len(ends) == 0 or ends[-1] != pos - 1:  # a last line without a line end
        ends = np.append(ends, pos)
        counts = np.append(counts, carry_count)
        has_cr = np.append(has_cr, prev_byte == 13)
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    lengths = np.maximum((ends - starts) - has_cr, 0).astype(np.int64)
    fields = counts if sep is None else np.where(lengths > 0, counts + 1, 0)
    return _Lines(starts, lengths, fields)


def _line_text(path: Path, lines: _Lines, i: int, encoding: str) -> str:
    with open(path, "rb") as f:
        f.seek(int(lines.starts[i]))
        return f.read(int(lines.lengths[i])).decode(encoding.replace("-sig", ""), errors="replace")


# --- what to say when nothing could be read -----------------------------------------------------------------


def no_bars_message(result: LoadResult, path: str | Path, *, shown: int = 5) -> str:
    """Why a file gave no usable bar: its first rejected lines with their reasons, and what to do about it."""
    lines = [f"{path}: no usable bar ({result.format} format, {len(result.rejected)} rows rejected)"]
    for line, reason in result.rejected[:shown]:
        lines.append(f"  line {line}: {reason}")
    if len(result.rejected) > shown:
        lines.append(f"  ... {len(result.rejected) - shown} more (scalper data check {path} --json lists them all)")
    lines.append(f"suggestion: {result.suggestion or 'export the bars again'}")
    return "\n".join(lines)


def _suggestion(rejected: list[tuple[int, str]], layout: Layout, shape: TimeShape | None, rows: int) -> str | None:
    if not rejected and rows == 0:
        return "the file has a header and no rows: export the bars again with a date range that holds bars"
    if not rejected:
        return None
    reasons = [r for _, r in rejected]
    top = max(set(k.split(" ")[0] + (" " + k.split(" ")[1] if k.startswith("bad ") else "") for k in reasons), key=lambda k: sum(r.startswith(k) for r in reasons))
    if top.startswith("expected"):
        return (f"the header names {layout.width} columns but the rows hold another number of fields: write the header "
                f"and the rows with the same separator ({'spaces' if layout.delimiter == WHITESPACE else repr(layout.delimiter)}), one field per column")
    if top == "bad time":
        return ("the times match no shape the loader reads: write them as YYYY-MM-DD HH:MM:SS (or YYYY.MM.DD and HH:MM:SS in "
                "two columns, or epoch seconds)" + (f"; the first row looked like {shape.name}" if shape else ""))
    if top.startswith("bad "):
        return f"the {top[4:]} column holds text that is no number: use `.` as the decimal point and no thousands separator"
    if top.startswith("line longer"):
        return f"the rows are longer than {MAX_LINE_BYTES} bytes: one bar per line, each line ending in a line break"
    return "every bar failed the price check (high >= max(open, close) >= min(open, close) >= low > 0, times increasing): check the column order"


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


def _sniff(path: Path) -> tuple[str, bool, list[str], bool]:
    """(encoding, lines wrapped in quotes, the first lines decoded, whether they are the whole file)."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    encoding = _encoding_of(head, path)
    text = head.decode(encoding, errors="replace").lstrip("\ufeff")
    whole = len(head) < _SNIFF_BYTES
    lines = text.split("\n")
    if not whole:
        lines = lines[:-1]  # the block may end inside a line
    return encoding, _wrapped_in_quotes(lines[:200]), lines, whole


@contextmanager
def _readable(path: Path) -> Iterator[tuple[Path, str, list[str], bool, list[str]]]:
    """The file as bytes the scan and pandas read: itself, or a UTF-8 copy of a UTF-16 or quote-wrapped one."""
    encoding, quoted, lines, whole = _sniff(path)
    notes = []
    if quoted:
        notes.append("every line is wrapped in quotes: read without them")
    if encoding.startswith("utf-16") or quoted:
        with _utf8_copy(path, encoding, quoted) as copy:
            _, _, lines, whole = _sniff(copy)
            yield copy, "utf-8", lines, whole, notes
    else:
        yield path, encoding, lines, whole, notes


def _time_strings(chunk, layout: Layout):
    if "datetime" in layout.columns:
        return chunk[layout.columns["datetime"]].str.strip()
    return chunk[layout.columns["date"]].str.strip().str.cat(chunk[layout.columns["time_of_day"]].str.strip(), sep=" ")


def _numbers(pd, column, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A chunk's column -> float64 values and a mask of the fields that are no number (NaN, from `nan`, is a number)."""
    if column.dtype.kind in "fiu":
        return column.to_numpy(np.float64), np.zeros(len(column), bool)
    coerced = pd.to_numeric(column, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    bad = np.isnan(coerced) & ~column.isna().to_numpy()
    return coerced, bad


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
    why for a file no format recognises, and OSError for a file that cannot be read. A file with no usable bar is
    a LoadResult with no bars, its rejected rows and a `suggestion` (`no_bars_message` words it).
    """
    rule = _server_rule(utc_offset_hours, server_time, tz)
    path = Path(path)
    if not path.is_file():
        Path(path).read_bytes()  # the OSError that says why
    with _readable(path) as (source, encoding, head_lines, whole, warnings):
        first_at = next((i for i, line in enumerate(head_lines) if line.strip()), None)
        if first_at is None:
            raise UnknownFormat(f"{path} is empty" if whole else f"{path} starts with {_SNIFF_BYTES} bytes of blank space")
        if len(head_lines[first_at].encode()) > MAX_LINE_BYTES or (not whole and len(head_lines) <= first_at + 1 and
                                                                    len("\n".join(head_lines).encode()) > MAX_LINE_BYTES):
            raise UnknownFormat(f"line {first_at + 1} is longer than {MAX_LINE_BYTES} bytes: not an M1 file of one bar per line")
        layout = detect_layout(head_lines[first_at])
        data_at = first_at + 1 if layout.header else first_at
        shape = _shape_from(layout, head_lines[data_at:])
        lines = _scan_lines(source, layout.delimiter)
        n_lines = len(lines.lengths)
        line_no = np.arange(1, n_lines + 1)
        after = line_no > data_at
        too_long = after & (lines.lengths > MAX_LINE_BYTES)
        blank = after & (lines.lengths == 0)
        wrong = after & ~too_long & ~blank & (lines.fields != layout.width)
        rejected: list[tuple[int, str]] = [(int(n), f"line longer than {MAX_LINE_BYTES} bytes") for n in line_no[too_long]]
        for i in np.flatnonzero(wrong):
            text = _line_text(source, lines, int(i), encoding)
            if text.strip():
                got = len(_split(text, layout.delimiter)) if layout.delimiter == WHITESPACE else text.count(layout.delimiter) + 1
                rejected.append((int(i) + 1, f"expected {layout.width} fields, got {got}"))
            else:
                blank[i] = True
        good = after & ~too_long & ~blank & ~wrong
        line_numbers = line_no[good]
        parts = _read_rows(source, encoding, layout, shape, skip=np.flatnonzero(~good), expected=len(line_numbers))

    rows_count = len(line_numbers)
    wall, stated_utc, bad, problems, values, chosen = parts
    if chosen:
        warnings.append(chosen)
    rejected.extend((int(line_numbers[i]), reason) for i, reason in problems.items())

    # The zone.
    stated = stated_utc or layout.format == "dukascopy"  # "Gmt time" without a suffix is UTC
    if stated:
        if rule is not None:
            warnings.append("the file states its UTC offset in every row: the offset or zone given was not used")
        rule = "stated"
    else:
        if rule is None and layout.format == "histdata":
            rule = f"{HISTDATA_UTC_OFFSET_HOURS:+g}"
        if rule is None:
            rule = "utc"
            warnings.append("the file states no time zone: times read as UTC (pass --utc-offset or --tz)")

    o, h, lo, c, vol = (values[k] for k in ("open", "high", "low", "close", "tick_volume"))
    # Filler bars (a closed market padded with flat zero-volume bars) can only be told when the file has volumes.
    has_volume = "tick_volume" in layout.columns and bool(np.any(vol[~bad] != 0))
    filler = (o == h) & (h == lo) & (lo == c) & (vol == 0) & ~bad if has_volume else np.zeros(rows_count, bool)
    keep_idx = np.flatnonzero(~bad & ~filler)
    times = wall[keep_idx] if stated else wall_to_utc(rule, wall[keep_idx])
    bars = Bars.from_columns(
        time=times,
        open=o[keep_idx], high=h[keep_idx], low=lo[keep_idx], close=c[keep_idx],
        tick_volume=np.rint(vol[keep_idx]).astype(np.int64),
        spread=values["spread"][keep_idx],
    )
    bars, bad_bars = validate_bars(bars)
    rejected.extend((int(line_numbers[keep_idx[i]]), reason) for i, reason in bad_bars)
    rejected.sort()
    if rejected:
        warnings.append(f"{len(rejected)} rows rejected (first at line {rejected[0][0]}: {rejected[0][1]})")
    suggestion = None
    if not len(bars):
        warnings.append("no usable bars")
        suggestion = _suggestion(rejected, layout, shape, rows_count)
    # Broker days are counted on the file's clock when it is a rule server_offset knows; else (offsets stated in the
    # rows, an IANA zone) on UTC, as paper accounts and backtests do by default (architecture.md, "Symbols and time").
    broker_rule = "utc" if rule == "stated" or rule.startswith("tz:") else rule
    return LoadResult(bars=bars, format=layout.format, rejected=rejected, dropped_flat=int(filler.sum()),
                      warnings=warnings, server_time=broker_rule, zone=rule, suggestion=suggestion)


def _shape_from(layout: Layout, data_lines: list[str]) -> TimeShape | None:
    """The time shape of the file's first data row (None: every time is bad, and each row says so)."""
    for line in data_lines:
        if not line.strip():
            continue
        fields = [f.strip().strip('"') for f in _split(line, layout.delimiter)]
        cols = layout.columns
        try:
            sample = fields[cols["datetime"]] if "datetime" in cols else f"{fields[cols['date']]} {fields[cols['time_of_day']]}"
        except IndexError:
            continue
        return time_shape(sample, day_first=True if layout.format == "dukascopy" else None)
    return None


def _read_rows(source: Path, encoding: str, layout: Layout, shape: TimeShape | None, *, skip: np.ndarray, expected: int):
    """The good lines through pandas' C parser, chunk by chunk: (wall or UTC epochs, whether UTC, bad mask,
    {row: reason}, {column: values}, a note on the day/month order chosen or None)."""
    import pandas as pd

    time_cols = [layout.columns[k] for k in ("datetime", "date", "time_of_day") if k in layout.columns]
    n_orders = len(shape.orders) if shape and not shape.name.startswith("epoch") else 1
    walls: list[list[np.ndarray]] = [[] for _ in range(n_orders)]
    bads: list[list[np.ndarray]] = [[] for _ in range(n_orders)]
    number_parts: dict[str, list[np.ndarray]] = {k: [] for k in ("open", "high", "low", "close", "tick_volume", "spread")}
    number_bad: list[np.ndarray] = []
    problems: dict[int, str] = {}
    offset = 0
    if expected:
        reader = pd.read_csv(
            source, sep=r"\s+" if layout.delimiter == WHITESPACE else layout.delimiter, header=None,
            skiprows=set(skip.tolist()), usecols=sorted(layout.columns.values()), dtype={i: str for i in time_cols},
            keep_default_na=False, na_values=_NA, skipinitialspace=True, encoding=encoding, encoding_errors="replace",
            chunksize=_CHUNK_ROWS, engine="c", skip_blank_lines=False,
        )
        with reader:
            for chunk in reader:
                n = len(chunk)
                times = _time_strings(chunk, layout)
                for k in range(n_orders):
                    if shape is None:
                        w, b = np.zeros(n, np.int64), np.ones(n, bool)
                    elif shape.name.startswith("epoch"):
                        w, b = _epoch_seconds(pd, times, shape)
                    else:
                        w, b = _parse_formats(pd, times, shape, k)
                    walls[k].append(w)
                    bads[k].append(b)
                bad_here = np.zeros(n, bool)
                for column, parts in number_parts.items():
                    if column not in layout.columns:
                        parts.append(np.zeros(n, np.float64))
                        continue
                    raw = chunk[layout.columns[column]]
                    v, b = _numbers(pd, raw, column)
                    if column in ("tick_volume", "spread"):
                        b |= ~np.isfinite(v)
                        v = np.where(b, 0.0, v)
                    for i in np.flatnonzero(b & ~bad_here):
                        problems[offset + int(i)] = f"bad {column} {str(raw.iloc[i]).strip()!r}"
                    bad_here |= b
                    parts.append(v)
                number_bad.append(bad_here)
                offset += n
    if offset != expected:
        raise UnknownFormat(f"{source}: {offset} rows parsed where {expected} lines were expected: a quoted field holds a line break")

    def joined(parts: list[np.ndarray], dtype) -> np.ndarray:
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

    candidates = [(joined(walls[k], np.int64), joined(bads[k], bool)) for k in range(n_orders)]
    chosen_note = None
    pick = 0
    if n_orders == 2:
        pick, chosen_note = _day_month_order(candidates, shape)
    wall, bad_time = candidates[pick]
    bad_number = joined(number_bad, bool)
    times_text = None
    for i in np.flatnonzero(bad_time):
        if times_text is None:
            times_text = _bad_time_strings(source, encoding, layout, skip, np.flatnonzero(bad_time))
        problems[int(i)] = f"bad time {times_text[int(i)]!r}"
    values = {k: joined(v, np.float64) for k, v in number_parts.items()}
    values["spread"] = values["spread"].astype(np.int64)
    return wall, bool(shape and shape.stated), bad_time | bad_number, problems, values, chosen_note


def _bad_time_strings(source: Path, encoding: str, layout: Layout, skip: np.ndarray, rows: np.ndarray) -> dict[int, str]:
    """The time text of the given parsed rows (only for the rejection reasons: a second, narrow read)."""
    import pandas as pd

    time_cols = [layout.columns[k] for k in ("datetime", "date", "time_of_day") if k in layout.columns]
    frame = pd.read_csv(source, sep=r"\s+" if layout.delimiter == WHITESPACE else layout.delimiter, header=None,
                        skiprows=set(skip.tolist()), usecols=time_cols, dtype=str, keep_default_na=False,
                        skipinitialspace=True, encoding=encoding, encoding_errors="replace", engine="c", skip_blank_lines=False)
    strings = _time_strings(frame, layout)
    return {int(i): str(strings.iloc[i]) for i in rows}


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
