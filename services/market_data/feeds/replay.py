"""Replay an M1 file as if live: at clock time `until` the feed serves the file's bars closed by then."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import numpy as np

from services.market_data.feeds.base import BAR_SECONDS, weekend_closed
from shared.bars import Bars
from shared.loaders import LoadResult, load_m1
from shared.logging import get_logger
from shared.symbols import UnknownSymbol, canonical_symbol
from shared.timeutil import from_epoch, to_epoch

log = get_logger(__name__)

WARMUP_BARS = 600


class ReplayFeed:
    name = "replay"

    def __init__(
        self,
        path: str | Path,
        symbol: str | None = None,
        *,
        server_time: str | None = None,
        utc_offset_hours: float | None = None,
        tz: str | None = None,
        warmup_bars: int = WARMUP_BARS,
        session_break_min: float = 30.0,
    ) -> None:
        """Load `path` now (construction may block; serving never does).

        The file's clock: `server_time`, `utc_offset_hours` or `tz` when given, else the one `load_m1` infers from
        its weekly close and daily break (UTC, with a warning, when it cannot tell). `symbol` defaults to the file name's leading letters (`XAUUSD_M1.csv` -> `XAUUSD`). A hole of at least
        `session_break_min` minutes between two bars of the file is a scheduled break (gold's daily hour, a holiday):
        the market counts as closed there, so staleness is judged only where the recording has bars or has ended.
        """
        self.path = Path(path)
        self.load: LoadResult = load_m1(self.path, utc_offset_hours=utc_offset_hours, server_time=server_time, tz=tz)
        if len(self.load.bars) == 0:
            raise ValueError(f"{self.path} holds no usable bars ({len(self.load.rejected)} rejected)")
        if symbol is None:
            match = re.match(r"[A-Za-z]+", self.path.stem)
            symbol = match.group(0).upper() if match else self.path.stem
        self.symbol = canonical_symbol(symbol)
        self.server_time = self.load.server_time
        self._bars = self.load.bars
        self._warmup = warmup_bars
        self._break_s = session_break_min * 60
        for warning in self.load.warnings:
            log.warning("replay file", path=str(self.path), warning=warning)
        log.info("replay loaded", path=str(self.path), symbol=self.symbol, format=self.load.format, rows=self.load.rows,
                 first=self.load.first.isoformat(), last=self.load.last.isoformat(), rejected=len(self.load.rejected))

    def symbols(self) -> list[str]:
        return [self.symbol]

    def start_time(self) -> datetime:
        i = min(self._warmup, len(self._bars)) - 1
        return from_epoch(int(self._bars.time[i]) + BAR_SECONDS)

    def ends_at(self) -> datetime:
        """Close time of the file's last bar."""
        return from_epoch(int(self._bars.time[-1]) + BAR_SECONDS)

    def closed_bars(self, symbol: str, *, until: datetime, count: int) -> Bars:
        self._check(symbol)
        k = int(np.searchsorted(self._bars.time, to_epoch(until) - BAR_SECONDS, side="right"))
        return self._bars[max(0, k - count):k]

    def market_open(self, symbol: str, at: datetime) -> bool:
        self._check(symbol)
        if weekend_closed(at):
            return False
        t = self._bars.time
        at_s = to_epoch(at)
        k = int(np.searchsorted(t, at_s - BAR_SECONDS, side="right"))  # bars closed by `at`
        if 0 < k < len(t) and t[k] > at_s:
            return bool(t[k] - (t[k - 1] + BAR_SECONDS) < self._break_s)
        return True

    def _check(self, symbol: str) -> None:
        if symbol != self.symbol:
            raise UnknownSymbol(f"this replay serves {self.symbol}, not {symbol!r}")
