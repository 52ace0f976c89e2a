"""The dialect: a file's format, separator, header and column positions, detected from its first non-blank line."""

from __future__ import annotations

from dataclasses import dataclass

from shared.loaders.report import UnknownFormat
from shared.loaders.times import time_shape

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
