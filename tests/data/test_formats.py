"""Every M1 format users bring, from small files written here (bad rows, CRLF, BOM, `;`, header case), the real files,
and a round trip property: a valid OHLC series written in any format loads back as the same bars."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from scalper.cli import app
from shared.loaders import UnknownFormat, detect_format, load_m1


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def write(tmp_path, name: str, text: str, *, crlf: bool = False, bom: bool = False):
    if crlf:
        text = text.replace("\n", "\r\n")
    data = text.encode()
    if bom:
        data = b"\xef\xbb\xbf" + data
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- one small file per format -----------------------------------------------------------------------------


def test_mt4_history_csv_without_header(tmp_path):
    path = write(tmp_path, "EURUSD1.csv", (
        "2024.05.29,00:00,1.08500,1.08520,1.08490,1.08510,25\n"
        "2024.05.29,00:01,1.08510,1.08530,1.08500,1.08525,30\n"
        "2024.05.29,00:02,1.08525,1.08520,1.08530,1.08525,30\n"  # line 3: high below low
        "2024.05.29,00:05,1.08525,1.08540,1.08520,1.08530,12\n"
    ), crlf=True)
    result = load_m1(path, utc_offset_hours=3)
    assert result.format == "mt4_csv"
    assert result.rows == 3
    assert result.first == utc(2024, 5, 28, 21, 0) and result.last == utc(2024, 5, 28, 21, 5)
    assert result.rejected == [(3, "high_below_low")]  # no header: the first row is line 1
    assert result.gaps == 1
    assert result.bars.tick_volume.tolist() == [25, 30, 12]
    assert result.warnings == ["1 rows rejected (first at line 3: high_below_low)"]


def test_dukascopy_local_time_with_offset_in_each_row(tmp_path):
    path = write(tmp_path, "EURUSD_Candlestick_1_M_BID.csv", (
        "Local time,Open,High,Low,Close,Volume\n"
        "29.05.2024 00:00:00.000 GMT+0300,1.08500,1.08520,1.08490,1.08510,123.45\n"
        "29.05.2024 00:01:00.000 GMT+0300,1.08510,1.08510,1.08510,1.08510,0\n"  # flat zero-volume filler
        "29.05.2024 00:02:00.000 GMT+0300,1.08510,1.08530,1.08500,1.08525,0.0234\n"
        "31.03.2024 04:00:00.000 GMT+0300,1.08510,1.08530,1.08500,1.08525,5\n"  # line 5: older than line 4
        "29.05.2024 00:03:00.000 GMT+03:00,1.08525,1.0853,1.085,x,5\n"  # line 6: bad close
    ), bom=True)
    result = load_m1(path)
    assert result.format == "dukascopy"
    assert result.rows == 2 and result.dropped_flat == 1
    assert result.first == utc(2024, 5, 28, 21, 0) and result.last == utc(2024, 5, 28, 21, 2)
    assert result.rejected == [(5, "time_not_increasing"), (6, "bad close 'x'")]
    assert not any("no time zone" in w for w in result.warnings)
    # A given offset does not override what the rows state; the warning says so.
    assert any("states its UTC offset" in w for w in load_m1(path, utc_offset_hours=2).warnings)


def test_dukascopy_gmt_time_header_is_utc(tmp_path):
    path = write(tmp_path, "d.csv", "Gmt time,Open,High,Low,Close,Volume\n01.01.2024 22:00:00.000,1.1,1.2,1.0,1.15,10\n")
    result = load_m1(path)
    assert result.format == "dukascopy" and result.first == utc(2024, 1, 1, 22, 0) and result.warnings == []


def test_histdata_is_est_without_dst(tmp_path):
    path = write(tmp_path, "DAT_ASCII_EURUSD_M1_2024.csv", (
        "20240102 170000;1.104270;1.104290;1.104250;1.104290;0\n"
        "20240102 170100;1.104290;1.104290;1.104290;1.104290;0\n"  # flat: kept, HistData volumes are always 0
        "20240702 120000;1.104290;1.104400;1.104200;1.104300;0\n"  # July: still UTC-5 (no DST)
        "20240702 1201;1.1;1.2;1.0;1.1;0\n"  # line 4: bad time
    ))
    result = load_m1(path)
    assert result.format == "histdata"
    assert result.rows == 3 and result.dropped_flat == 0
    assert result.first == utc(2024, 1, 2, 22, 0)
    assert result.last == utc(2024, 7, 2, 17, 0)
    assert result.rejected == [(4, "bad time '20240702 1201'")]
    assert result.warnings == ["1 rows rejected (first at line 4: bad time '20240702 1201')"]
    assert load_m1(path, utc_offset_hours=0).first == utc(2024, 1, 2, 17, 0)  # the user's word wins


def test_a_broken_first_row_does_not_make_later_good_times_bad(tmp_path):
    path = write(tmp_path, "broken_first.csv", (
        "time,open,high,low,close,volume\n"
        "foo,1,2,0.5,1,5\n"  # line 2: its time has no shape
        "2024-01-02 10:00,abc,2,0.5,1,1\n"  # line 3: a good time, a bad number
        "2024-01-02 10:01,1.1,1.2,1.0,1.1,1\n"
    ))
    result = load_m1(path)
    assert result.rejected == [(2, "bad time 'foo'"), (3, "bad open 'abc'")]
    assert result.rows == 1 and result.first == utc(2024, 1, 2, 10, 1)


@pytest.mark.parametrize("sep", [",", ";", "\t"])
@pytest.mark.parametrize("case", [str.lower, str.upper, str.title])
def test_generic_header_any_case_and_separator(tmp_path, sep, case):
    header = sep.join(case(n) for n in ("Timestamp", "Open", "High", "Low", "Close", "Volume"))
    rows = [
        sep.join(["2024-05-29 10:00:00", "2350.5", "2351.0", "2350.0", "2350.8", "12"]),
        sep.join(["2024-05-29 10:01:00", "2350.8", "2352.0", "2350.1", "2351.5", "8"]),
    ]
    path = write(tmp_path, "gold.txt", header + "\n" + "\n".join(rows) + "\n", crlf=sep == ";")
    result = load_m1(path, tz="Europe/Athens")  # EEST, UTC+3 in May
    assert result.format == "generic"
    assert result.first == utc(2024, 5, 29, 7, 0) and result.rows == 2
    assert result.bars.tick_volume.tolist() == [12, 8]


def test_generic_date_and_time_columns_and_iso_offsets(tmp_path):
    path = write(tmp_path, "x.csv", "DATE;TIME;OPEN;HIGH;LOW;CLOSE\n2024/05/29;10:00;1;2;0.5;1.5\n2024/05/29;10:01;1.5;2;1;1.2\n")
    assert load_m1(path).format == "generic" and load_m1(path).first == utc(2024, 5, 29, 10, 0)
    path = write(tmp_path, "y.csv", "time,open,high,low,close\n2024-05-29T10:00:00Z,1,2,0.5,1.5\n2024-05-29T13:01:00+03:00,1.5,2,1,1.2\n")
    result = load_m1(path)
    assert result.format == "generic" and result.warnings == []
    assert result.bars.time.tolist() == [int(utc(2024, 5, 29, 10, 0).timestamp()), int(utc(2024, 5, 29, 10, 1).timestamp())]


def test_mt5_export_both_header_spellings(tmp_path):
    native = "<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>\n"
    lower = "date\ttime\topen\thigh\tlow\tclose\ttickvolume\tvolume\tspread\n"
    row = "2024.05.29\t00:00:00\t1.08500\t1.08520\t1.08490\t1.08510\t25\t0\t8\n"
    for header in (native, lower):
        result = load_m1(write(tmp_path, "e.tsv", header + row, crlf=True), server_time="us_dst")
        assert result.format == "mt5_export" and result.first == utc(2024, 5, 28, 21, 0)
        assert result.bars.spread.tolist() == [8]


def test_mt5_rates_csv_with_epoch_times(tmp_path):
    t = int(utc(2024, 5, 29, 10, 0).timestamp())
    path = write(tmp_path, "r.csv", f"time,open,high,low,close,tick_volume,spread,real_volume\n{t},1,2,0.5,1.5,3,12,0\n")
    result = load_m1(path)
    assert result.format == "mt5_rates_csv" and result.first == utc(2024, 5, 29, 10, 0)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("helloworld\n", "no `,` `;` `|` tab or space separator"),
        ("hello world\n", "lacks open, high, low, close"),
        ("x,y,z\n1,2,3\n", "lacks open, high, low, close"),
        ("2024-05-29 10:00,1,2\n", "data without a header but has 2 fields"),
    ],
)
def test_unknown_files_say_why(tmp_path, text, why):
    with pytest.raises(UnknownFormat, match=why):
        load_m1(write(tmp_path, "bad.csv", text))


def test_binary_file_says_it_is_not_text(tmp_path):
    path = tmp_path / "x.hst"
    path.write_bytes(b"\x01\x00\x00\x00" * 100)
    with pytest.raises(UnknownFormat, match="not a text file"):
        load_m1(path)


def test_detect_format_names():
    assert detect_format("time,open,high,low,close,tick_volume,spread,real_volume") == "mt5_rates_csv"
    assert detect_format("time,open,high,low,close") == "generic"
    assert detect_format("Local time,Open,High,Low,Close,Volume") == "dukascopy"


def test_unknown_tz_is_refused(tmp_path):
    path = write(tmp_path, "x.csv", "time,open,high,low,close\n2024-05-29 10:00:00,1,2,0.5,1.5\n")
    with pytest.raises(ValueError, match="unknown time zone"):
        load_m1(path, tz="Mars/Olympus")


# --- `scalper data check` ------------------------------------------------------------------------------------


def test_data_check_json(tmp_path):
    path = write(tmp_path, "m4.csv", "2024.05.29,00:00,1.085,1.0852,1.0849,1.0851,25\n2024.05.29,00:03,1.085,1.0852,1.0849,9,25\n")
    out = CliRunner().invoke(app, ["data", "check", str(path), "--json", "--utc-offset", "2"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert set(doc) == {"format", "rows", "rejected", "dropped_flat", "first", "last", "gaps", "warnings", "server_time",
                        "server_time_confidence", "suggestion"}
    assert (doc["server_time"], doc["server_time_confidence"], doc["suggestion"]) == ("+2", 1.0, None)
    assert doc["format"] == "mt4_csv" and doc["rows"] == 1 and doc["first"] == "2024-05-28T22:00:00+00:00"
    assert doc["rejected"] == [{"line": 2, "reason": "open_close_outside_range"}]


def test_data_check_table_and_errors(tmp_path, gold_file):
    out = CliRunner().invoke(app, ["data", "check", str(gold_file)])
    assert out.exit_code == 0 and "mt5_rates_csv" in out.output and "63,230" in out.output
    out = CliRunner().invoke(app, ["data", "check", str(tmp_path / "missing.csv")])
    assert out.exit_code == 2 and "cannot read" in out.output
    out = CliRunner().invoke(app, ["data", "check", str(write(tmp_path, "b.csv", "x;y\n1;2\n"))])
    assert out.exit_code == 2 and "lacks" in out.output


def test_real_files_through_data_check(gold_file, eurusd_file):
    for path, fmt, rows, gaps in ((gold_file, "mt5_rates_csv", 63_230, 46), (eurusd_file, "mt5_export", 30_203, 12)):
        doc = json.loads(CliRunner().invoke(app, ["data", "check", str(path), "--json"]).output)
        assert (doc["format"], doc["rows"], doc["gaps"], doc["rejected"], doc["dropped_flat"]) == (fmt, rows, gaps, [], 0)


# --- round trip ------------------------------------------------------------------------------------------------

WRITERS = {
    "mt5_rates_csv": (
        "time,open,high,low,close,tick_volume,spread,real_volume\n",
        lambda t, o, h, lo, c, v: f"{t:%Y-%m-%d %H:%M:%S},{o},{h},{lo},{c},{v},0,0",
    ),
    "mt5_export": (
        "<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>\n",
        lambda t, o, h, lo, c, v: f"{t:%Y.%m.%d}\t{t:%H:%M:%S}\t{o}\t{h}\t{lo}\t{c}\t{v}\t0\t0",
    ),
    "mt4_csv": ("", lambda t, o, h, lo, c, v: f"{t:%Y.%m.%d},{t:%H:%M},{o},{h},{lo},{c},{v}"),
    "dukascopy": (
        "Local time,Open,High,Low,Close,Volume\n",
        lambda t, o, h, lo, c, v: f"{t:%d.%m.%Y %H:%M:%S}.000 GMT+0000,{o},{h},{lo},{c},{v}",
    ),
    "histdata": ("", lambda t, o, h, lo, c, v: f"{t:%Y%m%d %H%M%S};{o};{h};{lo};{c};0"),
    "generic": ("DateTime;Open;High;Low;Close;Volume\n", lambda t, o, h, lo, c, v: f"{t:%Y-%m-%dT%H:%M};{o};{h};{lo};{c};{v}"),
}

bar = st.tuples(
    st.integers(1, 5),  # minutes since the previous bar
    st.integers(100_000, 200_000), st.integers(0, 500), st.integers(0, 500), st.integers(0, 1000), st.integers(0, 1000),
    st.integers(1, 99),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(bar, min_size=1, max_size=40), st.sampled_from(sorted(WRITERS)), st.booleans())
def test_any_format_round_trips(tmp_path, rows, fmt, crlf):
    header, line = WRITERS[fmt]
    epoch = int(utc(2024, 3, 1).timestamp())
    expected, lines = [], []
    price = 150_000  # a walk, as a market's bars are (independent prices would be outliers to shared.sanity)
    for gap, base, up, down, a, _b, vol in rows:
        epoch += gap * 60
        t = datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)
        o = (price + base % 101 - 50) / 100_000
        c = (price + base % 101 - 50 + a - 500) / 100_000
        price += base % 101 - 50 + a - 500
        h = max(o, c) + (up + 50) / 100_000  # a range of at least 100 points: no row can be 25 ATR away
        lo = min(o, c) - (down + 50) / 100_000
        o, h, lo, c = (round(x, 5) for x in (o, h, lo, c))
        lines.append(line(t, o, h, lo, c, vol))
        expected.append((epoch, o, h, lo, c))
    path = write(tmp_path, f"rt_{fmt}.txt", header + "\n".join(lines) + "\n", crlf=crlf)
    offset = {"histdata": -5.0}.get(fmt, 0.0)
    result = load_m1(path) if fmt in ("dukascopy", "histdata") else load_m1(path, utc_offset_hours=0)
    assert result.format == fmt
    assert result.rejected == []
    b = result.bars
    got = list(zip((b.time + int(offset * 3600)).tolist(), b.open.tolist(), b.high.tolist(), b.low.tolist(), b.close.tolist()))
    assert got == expected
    assert np.all(np.diff(b.time) > 0)


def test_server_time_is_always_a_broker_clock_rule(tmp_path):
    """Market data counts broker days with LoadResult.server_time: it must be a rule server_offset knows."""
    from shared.timeutil import server_offset

    duka = write(tmp_path, "d.csv", "Local time,Open,High,Low,Close,Volume\n29.05.2024 00:00:00.000 GMT+0300,1.1,1.2,1.0,1.15,10\n")
    generic = write(tmp_path, "g.csv", "time,open,high,low,close\n2024-05-29 10:00:00,1,2,0.5,1.5\n")
    for result, zone in ((load_m1(duka), "stated"), (load_m1(generic, tz="Europe/Athens"), "tz:Europe/Athens"),
                         (load_m1(generic, utc_offset_hours=2), "+2")):
        assert result.zone == zone
        server_offset(result.server_time, utc(2024, 5, 29))
