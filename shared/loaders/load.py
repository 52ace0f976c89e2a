"""`load_m1`: an M1 file of any supported format -> UTC `Bars` and the validation report.

A sound file's rows are read by pyarrow's CSV reader (`rows.read_rows_arrow`, after a scan of its line ends); any
other's by pandas' C parser in chunks, after a numpy pass over the raw bytes that finds each line's length and field
count, so a wrong row or an over-long line is named by its line number without the parser ever holding it. Both
parsers are imported lazily, only when a file is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.bars import Bars
from shared.loaders.clock import INFER_MIN_CONFIDENCE, _server_rule, infer_clock, rule_flag, same_reading, wall_to_utc
from shared.loaders.layout import HISTDATA_UTC_OFFSET_HOURS, WHITESPACE, Layout, _split, detect_layout
from shared.loaders.report import LoadResult, UnknownFormat, validate_bars
from shared.loaders.rows import read_rows, read_rows_arrow
from shared.loaders.text import _SNIFF_BYTES, MAX_LINE_BYTES, _line_text, _readable, _scan_lines
from shared.loaders.times import TimeShape, time_shape


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
        fast = read_rows_arrow(source, encoding, layout, shape, data_at)
        if fast is not None:
            (line_numbers, parts), rejected = fast, []
        else:
            line_numbers, skip, rejected = _classify_lines(source, encoding, layout, data_at)
            parts = read_rows(source, encoding, layout, shape, skip=skip, expected=len(line_numbers))

    rows_count = len(line_numbers)
    wall, stated_utc, bad, values = parts.wall, parts.stated, parts.bad, parts.values
    if parts.order_note:
        warnings.append(parts.order_note)
    rejected.extend((int(line_numbers[i]), reason) for i, reason in parts.problems.items())

    o, h, lo, c, vol = (values[k] for k in ("open", "high", "low", "close", "tick_volume"))
    # Filler bars (a closed market padded with flat zero-volume bars) can only be told when the file has volumes.
    has_volume = "tick_volume" in layout.columns and bool(np.any((vol != 0) & ~bad))
    filler = (o == h) & (h == lo) & (lo == c) & (vol == 0) & ~bad if has_volume else np.zeros(rows_count, bool)
    dropped = bad | filler
    every = not dropped.any()  # the usual case: no index array, no copies of the columns
    keep_idx = None if every else np.flatnonzero(~dropped)
    dropped_flat = int(filler.sum())

    def kept(column: np.ndarray) -> np.ndarray:
        return column if every else column[keep_idx]

    wall_kept = kept(wall)

    # The zone: stated in the rows, given by the caller, HistData's EST, or inferred from the session ends.
    stated = stated_utc or layout.format == "dukascopy"  # "Gmt time" without a suffix is UTC
    confidence, clock_hint, source = 1.0, None, "stated"
    if stated:
        if rule is not None:
            warnings.append("the file states its UTC offset in every row: the offset or zone given was not used")
        rule = "stated"
    elif rule is None and layout.format == "histdata":
        rule, source = f"{HISTDATA_UTC_OFFSET_HOURS:+g}", "format"
    else:
        rule, confidence, clock_hint, source = _clock_rule(rule, wall_kept, warnings)

    # The columns are this function's own (read above, or copies of them): converted in place.
    times = wall_kept if stated else wall_to_utc(rule, wall_kept, in_place=True)
    volume = kept(vol)
    bars = Bars.from_columns(time=times, open=kept(o), high=kept(h), low=kept(lo), close=kept(c),
                             tick_volume=np.rint(volume, out=volume).astype(np.int64), spread=kept(values["spread"]))
    del parts, values, vol, volume, wall, wall_kept, filler, bad, dropped  # the columns live on in `bars`; the rest is freed before the check
    bars, bad_bars = validate_bars(bars)
    rejected.extend((int(line_numbers[i if every else keep_idx[i]]), reason) for i, reason in bad_bars)
    rejected.sort()
    if rejected:
        warnings.append(f"{len(rejected)} rows rejected (first at line {rejected[0][0]}: {rejected[0][1]})")
    suggestion = clock_hint
    if not len(bars):
        warnings.append("no usable bars")
        suggestion = _suggestion(rejected, layout, shape, rows_count)
    # Broker days are counted on the file's clock when it is a rule server_offset knows; else (offsets stated in the
    # rows, an IANA zone) on UTC, as paper accounts and backtests do by default (architecture.md, "Symbols and time").
    broker_rule = "utc" if rule == "stated" or rule.startswith("tz:") else rule
    return LoadResult(bars=bars, format=layout.format, rejected=rejected, dropped_flat=dropped_flat,
                      warnings=warnings, server_time=broker_rule, zone=rule, suggestion=suggestion,
                      server_time_confidence=confidence, server_time_source=source)


def _classify_lines(source: Path, encoding: str, layout: Layout, data_at: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """(line numbers of the lines pandas parses, indexes of the lines it skips, the refused ones with their reason):
    from the byte scan, so a line too long or with the wrong number of fields is refused before pandas sees it."""
    lines = _scan_lines(source, layout.delimiter)
    line_no = np.arange(1, len(lines.lengths) + 1)
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
    return line_no[good], np.flatnonzero(~good), rejected


def _clock_rule(given: str | None, wall: np.ndarray, warnings: list[str]) -> tuple[str, float, str | None, str]:
    """(the rule the file is read in, its confidence, the flag that would read it better or None, where the rule came
    from: given, inferred or default), noting in `warnings`.

    A rule the caller gives is used as given; when the session ends say clearly otherwise, the warning and the
    suggestion name the rule they fit."""
    guess = infer_clock(wall)
    sure = guess.confidence >= INFER_MIN_CONFIDENCE
    if given is not None:
        if sure and not same_reading(given, guess.rule, wall):
            warnings.append(f"times read as {given}, as given, but {guess.describe()}")
            return given, 1.0, rule_flag(guess.rule), "given"
        return given, 1.0, None, "given"
    if sure:
        warnings.append(f"the file states no time zone: broker clock inferred as {guess.rule}: {guess.describe()} "
                        f"(override with --server-time, --utc-offset or --tz)")
        return guess.rule, guess.confidence, None, "inferred"
    seen = guess.describe() if guess.weekly + guess.daily else "it has no weekly close or daily break"
    warnings.append(f"the file states no time zone and its clock cannot be told ({seen}): times read as UTC "
                    f"(pass --server-time, --utc-offset or --tz)")
    better = guess.rule != "utc" and guess.matched > 0 and not same_reading("utc", guess.rule, wall)
    return "utc", guess.confidence, rule_flag(guess.rule) if better else None, "default"


def _shape_from(layout: Layout, data_lines: list[str]) -> TimeShape | None:
    """The time shape of the file's first data row whose time has one (None: every time is bad, and each row says so);
    a broken first row does not make every later row's good time read as bad."""
    for line in data_lines:
        if not line.strip():
            continue
        fields = [f.strip().strip('"') for f in _split(line, layout.delimiter)]
        cols = layout.columns
        try:
            sample = fields[cols["datetime"]] if "datetime" in cols else f"{fields[cols['date']]} {fields[cols['time_of_day']]}"
        except IndexError:
            continue
        shape = time_shape(sample, day_first=True if layout.format == "dukascopy" else None)
        if shape is not None:
            return shape
    return None


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
                "two columns, or epoch seconds)" + (f"; the first time it could read looked like {shape.name}" if shape else ""))
    if top.startswith("bad "):
        return f"the {top[4:]} column holds text that is no number: use `.` as the decimal point and no thousands separator"
    if top.startswith("line longer"):
        return f"the rows are longer than {MAX_LINE_BYTES} bytes: one bar per line, each line ending in a line break"
    return "every bar failed the price check (high >= max(open, close) >= min(open, close) >= low > 0, times increasing): check the column order"
