"""Load M1 bar files of every format users bring (MT5 rates CSV, MT5 "Export bars", MT4 history, Dukascopy, HistData,
any OHLCV text with or without a header) into `Bars`: detect the format, convert to UTC, report every rejected row with
its line number and reason.

| module  | responsibility                                                                     |
|---------|------------------------------------------------------------------------------------|
| text    | the file as bytes: encoding, whole-line quotes, the sniffed head, the line scan    |
| layout  | the dialect: format, separator, header, column positions                           |
| times   | time shapes and their parsing, the day/month order                                 |
| clock   | the broker's clock: the rule a file's wall-clock times are read in, and to UTC     |
| report  | LoadResult (the validation report), UnknownFormat, validate_bars, no_bars_message  |
| load    | load_m1, the entry point                                                           |

pandas is imported only where a file is read."""

from shared.loaders.clock import wall_to_utc
from shared.loaders.layout import (
    FORMAT_NAMES,
    HISTDATA_UTC_OFFSET_HOURS,
    WHITESPACE,
    Layout,
    detect_format,
    detect_layout,
)
from shared.loaders.load import load_m1
from shared.loaders.report import (
    LoadResult,
    UnknownFormat,
    no_bars_message,
    validate_bars,
)
from shared.loaders.text import MAX_LINE_BYTES
from shared.loaders.times import TimeShape, parse_times, time_shape

__all__ = [
    "FORMAT_NAMES", "HISTDATA_UTC_OFFSET_HOURS", "MAX_LINE_BYTES", "WHITESPACE", "Layout", "LoadResult", "TimeShape",
    "UnknownFormat", "detect_format", "detect_layout", "load_m1", "no_bars_message", "parse_times", "time_shape",
    "validate_bars", "wall_to_utc",
]
