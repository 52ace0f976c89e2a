"""A corpus written here from the shipped gold file: every dialect, date/time shape, quoting, encoding and header
choice reads back to the gold file's own bars; a file with no usable bar exits 2 with its reasons."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest
from typer.testing import CliRunner

from scalper.cli import app
from shared.loaders import MAX_LINE_BYTES, load_m1

ROWS = 3_000  # two broker days and a bit: day changes for the day/month decision


@pytest.fixture(scope="module")
def gold(gold_file):
    result = load_m1(gold_file, utc_offset_hours=0)
    return result.bars[:ROWS]


def _stamp(t: int) -> datetime:
    return datetime.fromtimestamp(int(t), UTC).replace(tzinfo=None)


# name -> (header, row writer from (time, o, h, l, c, volume, spread), separator, expected format)
DIALECTS = {
    "rates_csv": ("time,open,high,low,close,tick_volume,spread,real_volume", lambda t, *p: [f"{t:%Y-%m-%d %H:%M:%S}", *p[:5], p[5], "0"], ",", "mt5_rates_csv"),
    "mt5_export": ("<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>", lambda t, *p: [f"{t:%Y.%m.%d}", f"{t:%H:%M:%S}", *p[:5], "0", p[5]], "\t", "mt5_export"),
    "mt4_headerless": (None, lambda t, *p: [f"{t:%Y.%m.%d}", f"{t:%H:%M}", *p[:5]], ",", "mt4_csv"),
    "semicolon_headerless": (None, lambda t, *p: [f"{t:%Y.%m.%d}", f"{t:%H:%M:%S}", *p[:5]], ";", "mt4_csv"),
    "dukascopy": ("Local time,Open,High,Low,Close,Volume", lambda t, *p: [f"{t:%d.%m.%Y %H:%M:%S}.000 GMT+0000", *p[:5]], ",", "dukascopy"),
    "histdata": (None, lambda t, *p: [f"{t:%Y%m%d %H%M%S}", *p[:4], "0"], ";", "histdata"),
    "iso_offset": ("timestamp,open,high,low,close,volume", lambda t, *p: [f"{t:%Y-%m-%dT%H:%M:%S}+00:00", *p[:5]], ",", "generic"),
    "epoch_s": ("time|open|high|low|close|volume", lambda t, *p: [str(int(t.replace(tzinfo=UTC).timestamp())), *p[:5]], "|", "generic"),
    "epoch_ms_headerless": (None, lambda t, *p: [str(int(t.replace(tzinfo=UTC).timestamp()) * 1000), *p[:5]], ",", "generic"),
    "compact_two_columns": ("date;time;open;high;low;close;volume", lambda t, *p: [f"{t:%Y%m%d}", f"{t:%H%M%S}", *p[:5]], ";", "generic"),
    "dmy_dots": ("Date,Time,Open,High,Low,Close,Volume", lambda t, *p: [f"{t:%d.%m.%Y}", f"{t:%H:%M}", *p[:5]], ",", "generic"),
    "mdy_slashes": ("Date,Time,Open,High,Low,Close,Volume", lambda t, *p: [f"{t:%m/%d/%Y}", f"{t:%H:%M}", *p[:5]], ",", "generic"),
    "spaces": ("Date Time Open High Low Close Volume", lambda t, *p: [f"{t:%Y-%m-%d}", f"{t:%H:%M:%S}", *p[:5]], " ", "generic"),
    "quoted_fields": ('"time","open","high","low","close","volume"', lambda t, *p: [f'"{t:%Y-%m-%d %H:%M}"', *(f'"{x}"' for x in p[:5])], ",", "generic"),
}


def write_corpus(path, bars, dialect: str, *, crlf=False, encoding="utf-8", bom=False, wrap_lines=False):
    header, row, sep, _fmt = DIALECTS[dialect]
    lines = [] if header is None else [header]
    for i in range(len(bars)):
        prices = [repr(float(x)) for x in (bars.open[i], bars.high[i], bars.low[i], bars.close[i])]
        lines.append(sep.join(row(_stamp(bars.time[i]), *prices, str(int(bars.tick_volume[i])), str(int(bars.spread[i])))))
    if wrap_lines:
        lines = [f'"{line}"' for line in lines]
    text = ("\r\n" if crlf else "\n").join(lines) + "\n"
    data = text.encode(encoding)
    if bom:
        data = b"\xef\xbb\xbf" + data
    path.write_bytes(data)
    return path


def assert_same_bars(result, bars, *, volume=True, spread=False):
    assert result.rejected == [] and result.rows == len(bars)
    got = result.bars
    for k in ("time", "open", "high", "low", "close"):
        assert np.array_equal(getattr(got, k), getattr(bars, k)), k
    if volume:
        assert np.array_equal(got.tick_volume, bars.tick_volume)
    if spread:
        assert np.array_equal(got.spread, bars.spread)


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_every_dialect_reads_the_gold_bars(tmp_path, gold, dialect):
    path = write_corpus(tmp_path / f"{dialect}.txt", gold, dialect)
    fmt = DIALECTS[dialect][3]
    result = load_m1(path) if fmt in ("dukascopy",) or dialect == "iso_offset" else load_m1(path, utc_offset_hours=-5 if fmt == "histdata" else 0)
    assert result.format == fmt
    if fmt == "histdata":
        result = load_m1(path, utc_offset_hours=0)  # the source's EST is HistData's; this corpus is UTC
    assert_same_bars(result, gold, volume=fmt != "histdata", spread=fmt in ("mt5_rates_csv", "mt5_export"))


@pytest.mark.parametrize(("dialect", "options"), [
    ("mt5_export", {"crlf": True, "encoding": "utf-16"}),
    ("mt5_export", {"crlf": True, "encoding": "utf-16-le"}),
    ("rates_csv", {"bom": True, "crlf": True}),
    ("mt4_headerless", {"wrap_lines": True, "crlf": True}),
    ("mt5_export", {"wrap_lines": True, "crlf": True}),
])
def test_encodings_line_ends_and_wrapped_lines(tmp_path, gold, dialect, options):
    result = load_m1(write_corpus(tmp_path / "x.txt", gold, dialect, **options), utc_offset_hours=0)
    assert result.format == DIALECTS[dialect][3]
    assert_same_bars(result, gold)
    assert ("every line is wrapped in quotes: read without them" in result.warnings) == bool(options.get("wrap_lines"))


def test_the_day_month_order_is_decided_by_the_values_and_said(tmp_path, gold):
    for dialect, chosen in (("mdy_slashes", "MM/DD/YYYY"), ("dmy_dots", "DD.MM.YYYY")):
        result = load_m1(write_corpus(tmp_path / f"{dialect}.csv", gold, dialect), utc_offset_hours=0)
        assert_same_bars(result, gold)
        assert any(w.startswith(f"dates read as {chosen}") for w in result.warnings), result.warnings


def test_the_shipped_files_infer_us_dst_and_read_as_before_when_told_utc(gold_file, eurusd_file):
    """Both shipped files are broker time (sessions end at 00:00 server time, 17:00 New York): us_dst, UTC+3 in their
    months. Told `--server-time utc`, they read bit for bit as they did when UTC was the default."""
    for path, fmt, rows, first_wall in ((gold_file, "mt5_rates_csv", 63_230, datetime(2026, 3, 24, 17, tzinfo=UTC)),
                                        (eurusd_file, "mt5_export", 30_203, datetime(2018, 6, 1, tzinfo=UTC))):
        inferred, as_utc = load_m1(path), load_m1(path, server_time="utc")
        assert (inferred.format, inferred.rows, inferred.rejected, inferred.server_time) == (fmt, rows, [], "us_dst")
        assert inferred.server_time_confidence >= 0.75 and inferred.suggestion is None
        assert (as_utc.rows, as_utc.rejected, as_utc.zone, as_utc.first) == (rows, [], "utc", first_wall)
        assert as_utc.suggestion == "--server-time us_dst"  # told utc, the loader still says what the file looks like
        assert np.array_equal(inferred.bars.time, as_utc.bars.time - 3 * 3600)
        for k in ("open", "high", "low", "close", "tick_volume", "spread"):
            assert np.array_equal(getattr(inferred.bars, k), getattr(as_utc.bars, k)), k


def test_a_long_line_is_refused_by_its_number(tmp_path, gold):
    path = write_corpus(tmp_path / "r.csv", gold[:5], "rates_csv")
    lines = path.read_text().splitlines()
    lines.insert(3, "9" * (MAX_LINE_BYTES + 1))
    path.write_text("\n".join(lines) + "\n")
    result = load_m1(path, utc_offset_hours=0)
    assert result.rejected == [(4, f"line longer than {MAX_LINE_BYTES} bytes")] and result.rows == 5


@pytest.mark.parametrize(("text", "reason"), [
    ("time,open,high,low,close\n", None),
    ("time,open,high,low,close\n2024-05-29 10:00,x,1,1,1\n2024-05-29 10:01,y,1,1,1\n", "line 2: bad open 'x'"),
    ('"2024.05.29\t00:00\t1\t2\t0.5\t9"\r\n', "line 1: open_close_outside_range"),
])
def test_no_usable_bar_exits_2_with_reasons_and_a_suggestion(tmp_path, text, reason):
    path = tmp_path / "bad.csv"
    path.write_bytes(text.encode())
    out = CliRunner().invoke(app, ["data", "check", str(path), "--json"])
    assert out.exit_code == 2
    assert "no usable bar" in out.output and "suggestion:" in out.output
    if reason:
        assert reason in out.output
    doc = json.loads(out.stdout[: out.stdout.rindex("}") + 1])
    assert doc["rows"] == 0 and doc["suggestion"]
    back = CliRunner().invoke(app, ["backtest", str(path), "--symbol", "XAUUSD", "--quiet"])
    assert back.exit_code == 2 and "no usable bar" in back.output
