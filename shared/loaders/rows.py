"""The rows through a C parser, batch by batch, into preallocated columns: times parsed with the file's exact format,
numbers as float64, and the reason for every field that is neither.

Two readers. `read_rows_arrow` is the fast path: pyarrow's CSV reader (typed as it parses: prices to float64, volumes
to int64, the times as bytes) on a file whose every data line is sound: no line blank or too long, no quote, the
field count the parser's to check, every number one both parsers read alike, every time in canonical fixed-width form
(read from the bytes by numpy). It returns None at the first thing it does not vouch for, and `read_rows` (pandas' C
parser on the lines the full byte scan keeps, by chunks) reads the file as before: every refusal, reason and count
stays that reader's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.loaders.layout import WHITESPACE, Layout
from shared.loaders.report import UnknownFormat
from shared.loaders.text import _SNIFF_BYTES, _soundness
from shared.loaders.times import (
    FixedFormat, TimeShape, _day_month_order, _epoch_seconds, _parse_formats, fixed_epochs, fixed_format,
)

ARROW_BLOCK_BYTES = 1 << 20  # pyarrow's batch: ~16,000 M1 rows, so memory stays that of the output columns
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


def _chosen_order(walls: list[np.ndarray], invalid: list[np.ndarray], shape: TimeShape | None, texts: dict[int, str],
                  problems: dict[int, str]) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(epochs, bad times, note) of the reading the file's values decide when the shape reads day and month either way
    (one reading per entry of `walls`), each of its bad times named in `problems` by its text."""
    pick, note = 0, None
    if len(walls) == 2:
        pick, note = _day_month_order(list(zip(walls, invalid, strict=True)), shape)
    for i in np.flatnonzero(invalid[pick]):
        problems[int(i)] = f"bad time {texts[int(i)]!r}"
    return walls[pick], invalid[pick], note


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

    wall, bad_time, note = _chosen_order(walls, bad_times, shape, time_text, problems)
    values["spread"] = values["spread"].astype(np.int64)
    return Rows(wall, bool(shape and shape.stated), bad_time | bad_number, problems, values, note)


def _time_plans(layout: Layout, shape: TimeShape | None) -> list[list[FixedFormat]] | None:
    """For each date order, the fixed-width byte layout of each time column (one, or date and time of day), or None
    when the shape is no fixed-width one (epochs, a stated offset, fractions): then pandas reads the times."""
    if shape is None or shape.stated or shape.name.startswith("epoch"):
        return None
    plans = []
    for formats in shape.orders:
        fmt = formats[0]
        parts = [fmt] if "datetime" in layout.columns else fmt.split(" ", 1)
        fixed = [fixed_format(p) for p in parts]
        if len(parts) != len(layout.columns.keys() & {"datetime", "date", "time_of_day"}) or None in fixed:
            return None
        plans.append(fixed)
    return plans


def _fixed_matrix(array, width: int) -> np.ndarray | None:
    """A pyarrow string array as a (rows, width) uint8 matrix over its own buffer, or None unless every string has
    `width` bytes."""
    n = len(array)
    offsets = np.frombuffer(array.buffers()[1], np.int32, count=n + 1, offset=array.offset * 4)
    if n == 0 or array.null_count or int(offsets[-1] - offsets[0]) != n * width or not (np.diff(offsets) == width).all():
        return None if n else np.zeros((0, width), np.uint8)
    data = np.frombuffer(array.buffers()[2], np.uint8)
    return data[offsets[0]:offsets[-1]].reshape(n, width)


def small_pages(n: int, dtype) -> np.ndarray:
    """A zeroed array on the kernel's ordinary 4 KB pages. numpy asks for huge pages on any array of 4 MB or more
    (madvise); where the kernel then compacts memory to find them (transparent_hugepage/defrag = madvise, the usual
    default), the first touch of a column of millions costs several times a plain page fault: these columns are
    written once, batch by batch, and gain nothing from huge pages. An anonymous mapping is zero-filled by the kernel."""
    import mmap

    size = n * np.dtype(dtype).itemsize
    if size < 1 << 22:
        return np.zeros(n, dtype)
    return np.frombuffer(mmap.mmap(-1, size), dtype, count=n)


class _Ahead:
    """The reader's batches, parsed by a thread of their own one or two ahead of the one this thread converts: pyarrow
    parses without the GIL, so the parse of a batch and the numpy work on the one before share the cores."""

    DEPTH = 2

    def __init__(self) -> None:
        import queue
        import threading

        self._queue: queue.Queue = queue.Queue(self.DEPTH)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._threading = threading

    def start(self, reader) -> None:
        self._thread = self._threading.Thread(target=self._produce, args=(reader,), name="m1-csv", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        import queue

        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, reader) -> None:
        try:
            for batch in reader:
                if not self._put(batch):
                    return
            self._put(None)
        except BaseException as error:  # handed to the consumer, which raises it as its own
            self._put(error)

    def __iter__(self):
        while (item := self._queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        """Stop the producer (it may be blocked on a full queue when the consumer gave up early) and wait for it."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()


def read_rows_arrow(source: Path, encoding: str, layout: Layout, shape: TimeShape | None, data_at: int) -> tuple[LineNumbers, Rows] | None:
    """(the line number of each row, the rows) of every line from index `data_at` on, by pyarrow's CSV reader, or
    None when the file is not one this path vouches for (the module header): `read_rows` then reads it."""
    plans = _time_plans(layout, shape)
    if plans is None or layout.delimiter == WHITESPACE or encoding not in ("utf-8", "utf-8-sig"):
        return None
    with open(source, "rb") as f:  # the offset of line `data_at`: the lines before it are in the sniffed head
        head = f.read(_SNIFF_BYTES)
    begin = 0
    for _ in range(data_at):
        begin = head.find(b"\n", begin) + 1
        if begin == 0:
            return None
    if begin == 0 and head.startswith(b"\xef\xbb\xbf"):
        begin = 3
    scan = _soundness(source, begin)
    if not scan.sound or scan.lines == 0:
        return None  # a quote, a lone CR or a line that may be too long: the full scan counts each by its line number
    expected = scan.lines

    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = [f"c{i}" for i in range(layout.width)]
    time_cols = [layout.columns[k] for k in ("datetime", "date", "time_of_day") if k in layout.columns]
    number_cols = {k: layout.columns[k] for k in NUMBER_COLUMNS if k in layout.columns}
    # Volumes as integers (the parse is cheaper; a volume with a decimal point makes the parser refuse the file and
    # the pandas path read it), prices as float64.
    types = {names[i]: pa.string() for i in time_cols} | {
        names[at]: pa.int64() if column in ("tick_volume", "spread") else pa.float64() for column, at in number_cols.items()}
    n_orders = len(plans)
    walls = [small_pages(expected, np.int64) for _ in range(n_orders)]
    invalid = [np.zeros(expected, bool) for _ in range(n_orders)]
    values = {k: small_pages(expected, np.int64 if k == "spread" else np.float64) for k in NUMBER_COLUMNS}
    odd: dict[int, str] = {}  # row -> its time text, for the rows in canonical form that name no real time
    offset = 0
    stream = pa.OSFile(str(source))
    batches = _Ahead()
    try:
        stream.seek(begin)
        reader = pacsv.open_csv(
            stream,
            # One parsing thread (`_Ahead`'s): pyarrow's own pool costs more than it gains on a batch of 1 MB.
            read_options=pacsv.ReadOptions(column_names=names, block_size=ARROW_BLOCK_BYTES, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=layout.delimiter, quote_char=False, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=list(types), null_values=NA,
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
        batches.start(reader)
        for batch in batches:
            n = batch.num_rows
            if offset + n > expected:
                return None
            here = slice(offset, offset + n)
            matrices = []
            for i, fixed in zip(time_cols, plans[0], strict=True):
                m = _fixed_matrix(batch.column(names[i]), fixed.width)
                if m is None:
                    return None
                matrices.append(m)
            for k, plan in enumerate(plans):
                parsed = fixed_epochs(matrices, plan)
                if parsed is None:
                    return None
                walls[k][here], invalid[k][here] = parsed
                for j in np.flatnonzero(parsed[1]):
                    odd.setdefault(offset + int(j), " ".join(bytes(m[j]).decode("ascii") for m in matrices))
            for column, at in number_cols.items():
                array = batch.column(names[at])
                nulls = array.null_count
                # The values' own buffer (Array.to_numpy would import pandas, which the backtester's start does without).
                if column in ("tick_volume", "spread"):
                    v = np.frombuffer(array.buffers()[1], np.int64, count=n, offset=array.offset * 8)
                    # A null volume (`nan`) is a bad one; beyond 2**53 pandas' float64 would round it.
                    if nulls or (n and int(np.abs(v).max()) >= 1 << 53):
                        return None
                else:
                    if nulls:  # `nan` and its kin, read as null: NaN, as pandas reads them
                        import pyarrow.compute as pc

                        array = pc.fill_null(array, np.nan)
                    v = np.frombuffer(array.buffers()[1], np.float64, count=n, offset=array.offset * 8)
                    # A NaN that is no null came from text pandas calls no number (`nAn`, `nan(1)`). Without the
                    # letters of `nan` and `inf` in the file, every price is finite.
                    if scan.letters and int(np.count_nonzero(np.isnan(v))) != nulls:
                        return None
                values[column][here] = v  # tick_volume as float64, spread as int64: what `read_rows` gives
            offset += n
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
        return None  # a row the parser refuses (its field count, a number, its encoding): the slow path names it
    finally:
        batches.stop()
        stream.close()
    if offset != expected:
        return None

    problems: dict[int, str] = {}
    if odd:
        # Canonical strings that name no real time (month 13 read month first, February 30): pandas' verdict on each.
        import pandas as pd

        rows = np.array(sorted(odd), np.int64)
        texts = pd.Series([odd[int(i)] for i in rows], dtype=object)
        for k in range(n_orders):
            w, b = _parse(pd, texts, shape, k)
            walls[k][rows], invalid[k][rows] = w, b
    wall, bad_time, note = _chosen_order(walls, invalid, shape, odd, problems)
    return LineNumbers(data_at + 1, expected), Rows(wall, False, bad_time, problems, values, note)


@dataclass(frozen=True, slots=True)
class LineNumbers:
    """The line numbers of rows read from consecutive lines: row i is line `first + i` (no array of millions)."""

    first: int
    count: int

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < self.count:
            raise IndexError(i)
        return self.first + int(i)
