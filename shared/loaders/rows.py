"""The good lines through pandas' C parser, chunk by chunk, into preallocated columns: times parsed with the file's
exact format, numbers as float64, and the reason for every field that is neither."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.loaders.layout import WHITESPACE, Layout
from shared.loaders.report import UnknownFormat
from shared.loaders.times import TimeShape, _day_month_order, _epoch_seconds, _parse_formats

CHUNK_ROWS = 200_000  # rows per pandas chunk: memory stays bounded on files of any length
NA = ["nan", "NaN", "NAN", "-nan", "-NaN"]  # read as NaN (the price check names them); any other text is a bad number
NUMBER_COLUMNS = ("open", "high", "low", "close", "tick_volume", "spread")


@dataclass(frozen=True, slots=True)
class Rows:
    wall: np.ndarray  # epoch seconds: UTC when `stated`, else the file's wall clock read as if UTC
    stated: bool  # the time strings carried their UTC offset
    bad: np.ndarray  # a time or a number that could not be read
    problems: dict[int, str]  # row -> reason, for the bad ones
    values: dict[str, np.ndarray]  # NUMBER_COLUMNS -> values (zeros for a column the file lacks; spread as int64)
    order_note: str | None  # the day/month order chosen, and why; None when the shape has one reading


def _time_strings(chunk, layout: Layout, strip: bool = False):
    """A chunk's time strings (object dtype); the C parser has already dropped leading spaces (skipinitialspace)."""
    if "datetime" in layout.columns:
        s = chunk[layout.columns["datetime"]]
        return s.str.strip() if strip else s
    date, tod = chunk[layout.columns["date"]], chunk[layout.columns["time_of_day"]]
    if strip:
        date, tod = date.str.strip(), tod.str.strip()
    return date + " " + tod


def _parse(pd, times, shape: TimeShape | None, order: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(times)
    if shape is None:
        return np.zeros(n, np.int64), np.ones(n, bool)
    if shape.name.startswith("epoch"):
        return _epoch_seconds(pd, times, shape)
    return _parse_formats(pd, times, shape, order)


def _numbers(pd, column) -> tuple[np.ndarray, np.ndarray]:
    """A chunk's column -> float64 values and a mask of the fields that are no number (NaN, from `nan`, is a number)."""
    if column.dtype.kind in "fiu":
        return column.to_numpy(np.float64), np.zeros(len(column), bool)
    coerced = pd.to_numeric(column, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    bad = np.isnan(coerced) & ~column.isna().to_numpy()
    return coerced, bad


def read_rows(source: Path, encoding: str, layout: Layout, shape: TimeShape | None, *, skip: np.ndarray, expected: int) -> Rows:
    """Parse the `expected` lines left after skipping the line indexes `skip`."""
    import pandas as pd

    time_cols = [layout.columns[k] for k in ("datetime", "date", "time_of_day") if k in layout.columns]
    number_cols = {k: layout.columns[k] for k in NUMBER_COLUMNS if k in layout.columns}
    n_orders = len(shape.orders) if shape and not shape.name.startswith("epoch") else 1
    walls = [np.zeros(expected, np.int64) for _ in range(n_orders)]
    bad_times = [np.zeros(expected, bool) for _ in range(n_orders)]
    values = {k: np.zeros(expected, np.float64) for k in NUMBER_COLUMNS}
    bad_number = np.zeros(expected, bool)
    problems: dict[int, str] = {}
    time_text: dict[int, str] = {}  # the text of every time some reading refused, for the reason
    offset = 0
    if expected:
        reader = pd.read_csv(
            source, sep=r"\s+" if layout.delimiter == WHITESPACE else layout.delimiter, header=None,
            skiprows=set(skip.tolist()), usecols=sorted(layout.columns.values()), dtype={i: object for i in time_cols},
            keep_default_na=False, na_values={i: NA for i in number_cols.values()}, skipinitialspace=True,
            encoding=encoding, encoding_errors="replace", chunksize=CHUNK_ROWS, engine="c", skip_blank_lines=False,
        )
        with reader:
            for chunk in reader:
                n = len(chunk)
                if offset + n > expected:
                    break  # said below
                here = slice(offset, offset + n)
                times = _time_strings(chunk, layout)
                for k in range(n_orders):
                    w, b = _parse(pd, times, shape, k)
                    if b.any():  # a time with spaces around it (or around date and time): once more, stripped
                        idx, w, b = np.flatnonzero(b), np.array(w), np.array(b)
                        stripped = _time_strings(chunk.iloc[idx], layout, strip=True)
                        changed = stripped.to_numpy() != times.iloc[idx].to_numpy()
                        if changed.any():
                            w[idx[changed]], b[idx[changed]] = _parse(pd, stripped[changed], shape, k)
                        for j in np.flatnonzero(b[idx]):
                            time_text.setdefault(offset + int(idx[j]), str(stripped.iloc[j]))
                    walls[k][here], bad_times[k][here] = w, b
                bad_here = bad_number[here]  # a view: filled in place
                for column, at in number_cols.items():
                    raw = chunk[at]
                    v, b = _numbers(pd, raw)
                    if column in ("tick_volume", "spread"):
                        b |= ~np.isfinite(v)
                        v = np.where(b, 0.0, v)
                    for i in np.flatnonzero(b & ~bad_here):
                        problems[offset + int(i)] = f"bad {column} {str(raw.iloc[i]).strip()!r}"
                    bad_here |= b
                    values[column][here] = v
                offset += n
    if offset != expected:
        raise UnknownFormat(f"{source}: the parser found another number of rows than the {expected} lines counted: "
                            f"a quoted field holds a line break")

    pick, note = 0, None
    if n_orders == 2:
        pick, note = _day_month_order(list(zip(walls, bad_times, strict=True)), shape)
    wall, bad_time = walls[pick], bad_times[pick]
    for i in np.flatnonzero(bad_time):
        problems[int(i)] = f"bad time {time_text[int(i)]!r}"
    values["spread"] = values["spread"].astype(np.int64)
    return Rows(wall, bool(shape and shape.stated), bad_time | bad_number, problems, values, note)
