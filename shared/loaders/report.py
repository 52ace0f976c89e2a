"""What a load gives back: the bars, the format, every rejected row with its line number and reason, and the words
for a file that gave no usable bar; and `validate_bars`, the one price-sanity rule the feeds share."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from shared.bars import Bars
from shared.sanity import check_bars
from shared.settings import get_settings
from shared.timeutil import from_epoch


class UnknownFormat(ValueError):
    """The file matches none of the known formats; the message says why."""


@dataclass(frozen=True, slots=True)
class LoadResult:
    bars: Bars
    format: str
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason), in file order
    dropped_flat: int = 0
    warnings: list[str] = field(default_factory=list)
    server_time: str = "utc"  # the broker-clock rule of the file (shared.timeutil.server_offset): broker-day boundaries
    zone: str = "utc"  # how the times were converted: a server_time rule, "stated" (offsets in the rows) or "tz:<IANA>"
    suggestion: str | None = None  # what to do when the file gave no usable bar, or the flag that reads its clock better
    server_time_confidence: float = 1.0  # 1 when the zone is stated or given; the inference's confidence otherwise
    server_time_source: str = "default"  # where `zone` came from: stated (in the rows), given, format, inferred, default

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
            "server_time": self.zone,
            "server_time_confidence": self.server_time_confidence,
            "suggestion": self.suggestion,
        }


# --- validation shared with the feeds ----------------------------------------------------------------------


def validate_bars(
    bars: Bars, *, previous_time: int | None = None, max_atr: float | None = None
) -> tuple[Bars, list[tuple[int, str]]]:
    """Split `bars` into the sound ones and (index, reason) for each rejected one: `shared.sanity.check_bars`, the one
    price-sanity rule, with the outlier limit `max_atr` (None: SCALPER_BAR_SANITY_ATR; math.inf: no outlier test)."""
    checked = check_bars(bars, max_atr=get_settings().bar_sanity_atr if max_atr is None else max_atr, previous_time=previous_time)
    return checked.bars, checked.rejected


def no_bars_message(result: LoadResult, path: str | Path, *, shown: int = 5) -> str:
    """Why a file gave no usable bar: its first rejected lines with their reasons, and what to do about it."""
    lines = [f"{path}: no usable bar ({result.format} format, {len(result.rejected)} rows rejected)"]
    for line, reason in result.rejected[:shown]:
        lines.append(f"  line {line}: {reason}")
    if len(result.rejected) > shown:
        lines.append(f"  ... {len(result.rejected) - shown} more (scalper data check {path} --json lists them all)")
    lines.append(f"suggestion: {result.suggestion or 'export the bars again'}")
    return "\n".join(lines)
