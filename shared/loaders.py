"""Load M1 bar files (MT5 rates CSV, MT5 "Export bars") into `Bars`: detect the format, convert server time to UTC,
and report every rejected row with its line number and reason."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from shared.bars import FIELDS, Bars, bar_problem
from shared.timeutil import from_epoch, server_to_utc

_NO_TIME = np.iinfo(np.int64).min


class UnknownFormat(ValueError):
    """The file's header matches none of the known formats."""


@dataclass(frozen=True, slots=True)
class LoadResult:
    bars: Bars
    format: str
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason), in file order
    dropped_flat: int = 0
    warnings: list[str] = field(default_factory=list)
    server_time: str = "utc"  # the rule the file's times were converted with

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


def validate_bars(bars: Bars, *, previous_time: int | None = None) -> tuple[Bars, list[tuple[int, str]]]:
    """Split `bars` into the sound ones and (index, reason) for each rejected one, reasons from `bar_problem`.

    Vectorised: `bar_problem` runs only on the rows the array checks flag, with the time of the last accepted bar
    as `previous_time` (so a duplicate or backwards bar is refused, never the good bar before it).
    """
    o, h, lo, c, t = bars.open, bars.high, bars.low, bars.close, bars.time
    price_ok = (
        np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c)
        & (o > 0) & (h > 0) & (lo > 0) & (c > 0)
        & (h >= lo) & (h >= np.maximum(o, c)) & (lo <= np.minimum(o, c))
    )
    # A price-sound bar whose time is not after the last accepted one is refused; such a bar never raises the
    # running maximum, so the maximum over all price-sound bars is the last accepted time.
    start = _NO_TIME if previous_time is None else previous_time
    running = np.maximum.accumulate(np.where(price_ok, t, _NO_TIME)) if len(t) else t
    previous = np.maximum(np.concatenate(([start], running[:-1])), start) if len(t) else t
    ok = price_ok & (t > previous)
    rejected = []
    for i in np.flatnonzero(~ok):
        prev = None if previous[i] == _NO_TIME else int(previous[i])
        reason = bar_problem(time=int(t[i]), open=float(o[i]), high=float(h[i]), low=float(lo[i]), close=float(c[i]), previous_time=prev)
        rejected.append((int(i), reason or "invalid"))
    if not rejected:
        return bars, []
    return _take(bars, ok), rejected


def _take(bars: Bars, mask: np.ndarray) -> Bars:
    return Bars(*(getattr(bars, f)[mask] for f in FIELDS))


# --- formats -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Format:
    name: str
    delimiter: str
    required: tuple[str, ...]  # header names (lower case, without <>) that identify the format
    aliases: dict[str, tuple[str, ...]]  # our column -> header names it may carry
    wall_times: Callable[[dict[str, list[str]]], tuple[np.ndarray, np.ndarray]]  # -> epoch of wall clock, bad mask

    def matches(self, names: list[str], delimiter: str) -> bool:
        return delimiter == self.delimiter and all(r in names for r in self.required)


def _parse_times(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    try:
        return np.array(strings, dtype="datetime64[s]").astype(np.int64), np.zeros(len(strings), bool)
    except ValueError:
        pass
    out = np.zeros(len(strings), np.int64)
    bad = np.zeros(len(strings), bool)
    for i, s in enumerate(strings):
        try:
            out[i] = np.datetime64(s, "s").astype(np.int64)
        except ValueError:
            bad[i] = True
    return out, bad


def _rates_times(cols: dict[str, list[str]]) -> tuple[np.ndarray, np.ndarray]:
    times = [s.strip() for s in cols["time"]]
    if times and all(s.isdigit() for s in times[:10]):  # raw `copy_rates` epoch seconds
        return _parse_numbers(times, np.int64)
    return _parse_times(times)


def _raw_time(cols: dict[str, list[str]], i: int) -> str:
    return " ".join(cols[c][i].strip() for c in ("date", "time") if c in cols)


def _export_times(cols: dict[str, list[str]]) -> tuple[np.ndarray, np.ndarray]:
    joined = []
    for d, t in zip(cols["date"], cols["time"]):
        t = t.strip()
        joined.append(f"{d.strip().replace('.', '-')}T{t}:00" if len(t) == 5 else f"{d.strip().replace('.', '-')}T{t}")
    return _parse_times(joined)


_OHLC = {"open": ("open",), "high": ("high",), "low": ("low",), "close": ("close",)}

# Detection is first match wins: add a row here (and its time parser) for each new format.
FORMATS: tuple[_Format, ...] = (
    _Format(
        "mt5_rates_csv",
        ",",
        ("time", "open", "high", "low", "close"),
        {"time": ("time",), **_OHLC, "tick_volume": ("tick_volume",), "spread": ("spread",)},
        _rates_times,
    ),
    _Format(
        "mt5_export",
        "\t",
        ("date", "time", "open", "high", "low", "close"),
        {"date": ("date",), "time": ("time",), **_OHLC, "tick_volume": ("tickvol", "tickvolume", "tick_volume"), "spread": ("spread",)},
        _export_times,
    ),
)


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


def _decode(raw: bytes) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    return raw.decode("utf-8-sig")


def _header_names(line: str, delimiter: str) -> list[str]:
    return [n.strip().strip("<>").strip().lower() for n in line.split(delimiter)]


def detect_format(header: str) -> _Format:
    for delimiter in ("\t", ",", ";"):
        if delimiter in header:
            names = _header_names(header, delimiter)
            for fmt in FORMATS:
                if fmt.matches(names, delimiter):
                    return fmt
    known = ", ".join(f.name for f in FORMATS)
    raise UnknownFormat(f"unrecognised header {header.strip()[:120]!r}; known formats: {known}")


# --- the loader --------------------------------------------------------------------------------------------


def _server_rule(utc_offset_hours: float | None, server_time: str | None) -> str | None:
    if utc_offset_hours is not None and server_time is not None:
        raise ValueError("give utc_offset_hours or server_time, not both")
    if utc_offset_hours is not None:
        return f"{float(utc_offset_hours):+g}"
    return server_time


def wall_to_utc(rule: str, wall: np.ndarray) -> np.ndarray:
    """Convert broker wall-clock epochs (read as if UTC) to UTC epochs with `server_to_utc`, one call per hour.

    Offsets change only on whole UTC hours and are whole hours (or constant), so every minute of a wall-clock
    hour shares the hour's offset.
    """
    if len(wall) == 0:
        return wall
    hours, inverse = np.unique(wall // 3600 * 3600, return_inverse=True)
    offsets = np.array([h - int(server_to_utc(rule, from_epoch(int(h)).replace(tzinfo=None)).timestamp()) for h in hours], np.int64)
    return wall - offsets[inverse]


def load_m1(path: str | Path, *, utc_offset_hours: float | None = None, server_time: str | None = None) -> LoadResult:
    """Read an M1 file, convert its server times to UTC, and keep every sound bar (oldest first).

    With neither `utc_offset_hours` nor `server_time` the times are read as UTC and a warning says so.
    Raises UnknownFormat for a header no format recognises.
    """
    rule = _server_rule(utc_offset_hours, server_time)
    warnings: list[str] = []
    if rule is None:
        rule = "utc"
        warnings.append("the file states no time zone: times read as UTC (pass utc_offset_hours or server_time)")

    lines = _decode(Path(path).read_bytes()).split("\n")
    header_at = next((i for i, line in enumerate(lines) if line.strip()), None)
    if header_at is None:
        raise UnknownFormat(f"{path} is empty")
    fmt = detect_format(lines[header_at])
    names = _header_names(lines[header_at].rstrip("\r"), fmt.delimiter)
    index = {}
    for column, options in fmt.aliases.items():
        found = next((names.index(o) for o in options if o in names), None)
        if found is not None:
            index[column] = found

    rejected: list[tuple[int, str]] = []
    width = len(names)
    good: list[str] = []
    line_numbers: list[int] = []
    for n, line in enumerate(lines[header_at + 1:], start=header_at + 2):
        line = line.rstrip("\r")
        if line.count(fmt.delimiter) == width - 1:
            good.append(line)
            line_numbers.append(n)
        elif line.strip():
            rejected.append((n, f"expected {width} fields, got {line.count(fmt.delimiter) + 1}"))
    # One split of the joined rows is several times faster than a split per row.
    flat = fmt.delimiter.join(good).split(fmt.delimiter) if good else []
    rows_count = len(good)

    cols = {column: flat[i::width] for column, i in index.items()}
    wall, bad = fmt.wall_times(cols)
    problems = {int(i): f"bad time {_raw_time(cols, int(i))!r}" for i in np.flatnonzero(bad)}
    values = {}
    for column in ("open", "high", "low", "close", "tick_volume", "spread"):
        if column not in cols:
            values[column] = np.zeros(rows_count, np.int64)
            continue
        values[column], bad_number = _parse_numbers(cols[column], np.float64 if column in _OHLC else np.int64)
        for i in np.flatnonzero(bad_number & ~bad):
            problems[int(i)] = f"bad {column} {cols[column][i]!r}"
        bad |= bad_number
    rejected.extend((line_numbers[i], reason) for i, reason in problems.items())

    o, h, lo, c, vol = (values[k] for k in ("open", "high", "low", "close", "tick_volume"))
    filler = (o == h) & (h == lo) & (lo == c) & (vol == 0) & ~bad
    keep_idx = np.flatnonzero(~bad & ~filler)
    bars = Bars.from_columns(
        time=wall_to_utc(rule, wall[keep_idx]),
        **{k: values[k][keep_idx] for k in ("open", "high", "low", "close", "tick_volume", "spread")},
    )
    bars, bad_bars = validate_bars(bars)
    rejected.extend((line_numbers[keep_idx[i]], reason) for i, reason in bad_bars)
    rejected.sort()
    if rejected:
        warnings.append(f"{len(rejected)} rows rejected (first at line {rejected[0][0]}: {rejected[0][1]})")
    return LoadResult(bars=bars, format=fmt.name, rejected=rejected, dropped_flat=int(filler.sum()), warnings=warnings, server_time=rule)
