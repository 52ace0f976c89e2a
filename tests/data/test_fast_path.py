"""The fast path (pyarrow's CSV reader, times read from the bytes) against the pandas path, file by file: the same bars,
rejected rows and reasons, warnings and clock; and which files it takes, so that it cannot silently stop being taken."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

import shared.loaders.load as load_module
from shared.bars import FIELDS
from shared.loaders import MAX_LINE_BYTES, load_m1
from shared.loaders.times import fixed_epochs, fixed_format
from tests.data.test_corpus import DIALECTS, write_corpus

ROWS = 3_000

# Dialects whose rows the fast path reads (the rest: whitespace-separated, quoted, epochs, stated offsets: pandas).
FAST = {"rates_csv", "mt5_export", "mt4_headerless", "semicolon_headerless", "histdata", "compact_two_columns",
        "dmy_dots", "mdy_slashes"}


@pytest.fixture(scope="module")
def gold(gold_file):
    return load_m1(gold_file, utc_offset_hours=0).bars[:ROWS]


def _both(monkeypatch, path, **options):
    """(the load as it runs, whether the fast path read it, the load with the pandas path only)."""
    taken = []
    real = load_module.read_rows_arrow

    def spy(*args):
        got = real(*args)
        taken.append(got is not None)
        return got

    monkeypatch.setattr(load_module, "read_rows_arrow", spy)
    fast = load_m1(path, **options)
    monkeypatch.setattr(load_module, "read_rows_arrow", lambda *args: None)
    slow = load_m1(path, **options)
    monkeypatch.setattr(load_module, "read_rows_arrow", real)
    return fast, taken == [True], slow


def assert_same_load(a, b):
    for f in FIELDS:
        assert np.array_equal(getattr(a.bars, f), getattr(b.bars, f)), f
        assert getattr(a.bars, f).dtype == getattr(b.bars, f).dtype, f
    assert a.rejected == b.rejected
    assert (a.format, a.dropped_flat, a.warnings, a.server_time, a.zone, a.suggestion, a.server_time_confidence) == \
        (b.format, b.dropped_flat, b.warnings, b.server_time, b.zone, b.suggestion, b.server_time_confidence)


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
@pytest.mark.parametrize("options", [{}, {"crlf": True}, {"bom": True}])
def test_every_dialect_reads_alike_on_both_paths(tmp_path, monkeypatch, gold, dialect, options):
    path = write_corpus(tmp_path / f"{dialect}.txt", gold, dialect, **options)
    fast, taken, slow = _both(monkeypatch, path, utc_offset_hours=0)
    assert taken == (dialect in FAST)
    assert_same_load(fast, slow)
    assert fast.rows == ROWS and fast.rejected == []


# Each corruption -> (the change, whether the fast path still vouches for the file (else the pandas path reads it),
# whether the changed rows are refused: a time without seconds, a space before it, a quoted number or a blank line are
# no fault).
CORRUPTIONS = {
    "month_13": (lambda line: line.replace("-03-", "-13-", 1), True, True),
    "february_30": (lambda line: line[:5] + "02-30" + line[10:], True, True),
    "hour_24": (lambda line: line[:11] + "24" + line[13:], True, True),
    "year_1899": (lambda line: "1899" + line[4:], True, True),
    "nan_price": (lambda line: _field(line, 2, "nan"), True, True),
    "inf_price": (lambda line: _field(line, 2, "inf"), True, True),
    "negative_zero": (lambda line: _field(line, 1, "-0"), True, True),
    "mixed_case_nan": (lambda line: _field(line, 2, "nAn"), False, True),
    "nan_volume": (lambda line: _field(line, 5, "nan"), False, True),
    "text_price": (lambda line: _field(line, 3, "x"), False, True),
    "empty_price": (lambda line: _field(line, 3, ""), False, True),
    "t_separator": (lambda line: line[:10] + "T" + line[11:], False, True),
    "short_time": (lambda line: line[:16] + line[19:], False, False),
    "space_before_time": (lambda line: " " + line, False, False),
    "one_field_more": (lambda line: line + ",1", False, True),
    "one_field_less": (lambda line: line.rsplit(",", 1)[0], False, True),
    "blank_line": (lambda line: line + "\n", False, False),
    "long_line": (lambda line: "9" * (MAX_LINE_BYTES + 1), False, True),
    "quoted_field": (lambda line: _field(line, 1, '"' + line.split(",")[1] + '"'), False, False),
    "backwards_time": (None, True, True),
    "decimal_volume": (lambda line: _field(line, 5, "611.0"), False, False),
    "huge_spread": (lambda line: _field(line, 6, str(2 ** 60)), False, False),
}


def _field(line: str, i: int, value: str) -> str:
    fields = line.split(",")
    fields[i] = value
    return ",".join(fields)


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupted_rows_are_refused_alike(tmp_path, monkeypatch, gold, corruption):
    path = write_corpus(tmp_path / "r.csv", gold, "rates_csv")
    lines = path.read_text().split("\n")
    change, fast_ok, refused = CORRUPTIONS[corruption]
    for at in (7, 1500, 2999):
        lines[at] = lines[at - 2] if change is None else change(lines[at])
    path.write_text("\n".join(lines))
    fast, taken, slow = _both(monkeypatch, path)
    assert taken == fast_ok
    assert_same_load(fast, slow)
    assert (len(fast.rejected) == 3) == refused, fast.rejected


@pytest.mark.parametrize(("at", "change", "reason"), [
    (-100, lambda line: _field(line, 2, "x"), "bad high 'x'"),  # the parser refuses it, in the reading thread
    (20, lambda line: line[:10] + "T" + line[11:], "bad time"),  # this thread gives up, the reader blocked ahead
])
def test_a_refusal_after_batches_were_read_ahead_stops_the_reader(tmp_path, monkeypatch, gold_file, at, change, reason):
    """The whole gold file (several batches) with one bad row: the fast path gives up mid-file, its reading thread
    stops, and the pandas path reads the file."""
    lines = gold_file.read_text().split("\n")
    lines[at] = change(lines[at])
    path = tmp_path / "one_bad.csv"
    path.write_text("\n".join(lines))
    fast, taken, slow = _both(monkeypatch, path)
    assert not taken
    assert_same_load(fast, slow)
    assert len(fast.rejected) == 1 and fast.rejected[0][1].startswith(reason)
    assert not [t for t in threading.enumerate() if t.name == "m1-csv"]


def test_the_day_month_order_and_impossible_dates_alike(tmp_path, monkeypatch, gold):
    for dialect in ("mdy_slashes", "dmy_dots"):
        path = write_corpus(tmp_path / f"{dialect}.csv", gold, dialect)
        lines = path.read_text().split("\n")
        lines[10] = lines[10].replace(lines[10][:5], "31/31" if dialect == "mdy_slashes" else "31.31", 1)
        path.write_text("\n".join(lines))
        fast, taken, slow = _both(monkeypatch, path, utc_offset_hours=0)
        assert taken
        assert_same_load(fast, slow)
        assert [line for line, _ in fast.rejected] == [11]
        assert any(w.startswith("dates read as") for w in fast.warnings)


def test_the_shipped_files_take_the_fast_path_and_read_alike(monkeypatch, gold_file, eurusd_file):
    for path in (gold_file, eurusd_file):
        fast, taken, slow = _both(monkeypatch, path)
        assert taken
        assert_same_load(fast, slow)


@pytest.mark.parametrize("fmt", ["%Y-%m-%d %H:%M:%S", "%Y.%m.%d %H:%M", "%d.%m.%Y %H:%M:%S", "%m/%d/%Y %H:%M",
                                 "%Y%m%d %H%M%S", "%Y%m%d", "%H%M", "%%%Y-%m-%d"])
def test_fixed_width_times_read_as_pandas_reads_them(fmt):
    """Random canonical strings, real times and impossible ones: the verdict and the epoch are pandas' exact-format
    ones (an impossible time is flagged; the loader asks pandas about those)."""
    rng = np.random.default_rng(7)
    n = 20_000
    stamps = pd.Series(pd.to_datetime(rng.integers(-2_208_988_800, 7_258_118_400, n), unit="s"))
    strings = list(stamps.dt.strftime(fmt))
    # Impossible ones: the same shape, numbers out of range (month 13, day 31 of a short month, hour 24, minute 60).
    for i in range(0, n, 97):
        s = strings[i]
        pos = rng.integers(0, len(s))
        if s[pos].isdigit():
            strings[i] = s[:pos] + str(rng.integers(0, 10)) + s[pos + 1:]
    layout = fixed_format(fmt)
    matrix = np.frombuffer("".join(strings).encode(), np.uint8).reshape(n, layout.width)
    epochs, invalid = fixed_epochs([matrix], [layout])
    parsed = pd.to_datetime(pd.Series(strings), format=fmt, errors="coerce")
    pandas_bad = parsed.isna().to_numpy()
    in_years = (parsed.dt.year.fillna(2000).to_numpy() >= 1900) & (parsed.dt.year.fillna(2000).to_numpy() <= 2200)
    # Flagged exactly when pandas refuses (years outside 1900-2200 are flagged too: pandas is asked about them).
    assert np.array_equal(invalid, pandas_bad | ~in_years)
    ok = ~invalid
    want = parsed[ok].to_numpy(dtype="datetime64[s]").astype(np.int64)
    assert np.array_equal(epochs[ok], want)
    assert invalid.sum() > 0 and ok.sum() > n // 2


def test_a_string_out_of_canonical_form_is_left_to_pandas():
    layout = fixed_format("%Y-%m-%d %H:%M:%S")
    for text in (b"2024-02-29T23:59:59", b"2024-02-29 23:5a:59", b"2024-02-29 23:5/:59", b"2024-02-29 2:59:590"):
        assert fixed_epochs([np.frombuffer(text, np.uint8).reshape(1, 19)], [layout]) is None
    assert fixed_format("%Y-%m-%d %H:%M:%S.%f") is None and fixed_format("%Y-%m-%d %H:%M%z") is None
