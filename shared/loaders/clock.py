"""The file's clock: the rule its wall-clock times are read in (a fixed offset, `us_dst`, an IANA zone) and their
conversion to UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from shared.timeutil import from_epoch, server_to_utc


def _server_rule(utc_offset_hours: float | None, server_time: str | None, tz: str | None) -> str | None:
    given = [x for x in (utc_offset_hours, server_time, tz) if x is not None]
    if len(given) > 1:
        raise ValueError("give one of utc_offset_hours, server_time or tz, not both")
    if utc_offset_hours is not None:
        return f"{float(utc_offset_hours):+g}"
    if tz is not None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {tz!r}: use an IANA name such as Europe/Athens or America/New_York") from None
        return f"tz:{tz}"
    return server_time


def _zone_offset(rule: str, hour_epoch: int) -> int:
    """Seconds the wall clock of `rule` is ahead of UTC at the wall-clock hour `hour_epoch` (read as if UTC)."""
    if rule.startswith("tz:"):
        # A wall time that a DST switch skips or repeats takes the offset before the switch (fold=0).
        wall = datetime.fromtimestamp(hour_epoch, UTC).replace(tzinfo=ZoneInfo(rule[3:]))
        return int(wall.utcoffset().total_seconds())
    return hour_epoch - int(server_to_utc(rule, from_epoch(hour_epoch).replace(tzinfo=None)).timestamp())


def wall_to_utc(rule: str, wall: np.ndarray) -> np.ndarray:
    """Convert wall-clock epochs (read as if UTC) to UTC epochs: `server_to_utc`'s rules, or `tz:<IANA name>`.

    Offsets change only on whole hours, so every minute of a wall-clock hour shares the hour's offset: one
    conversion per distinct hour.
    """
    if len(wall) == 0:
        return wall
    hours, inverse = np.unique(wall // 3600 * 3600, return_inverse=True)
    offsets = np.array([_zone_offset(rule, int(h)) for h in hours], np.int64)
    return wall - offsets[inverse]
