"""The `--json` document as text: the small parts indented as `json.dumps(indent=2)` writes them, each item of a
top-level list (a trade, a signal) on one line. json's indenting encoder is pure Python and took longer than the
backtest's decisions on a year's 6,700 trades; one line per item goes through its C encoder and stays readable.
The rows' numbers are rounded and their timestamps formatted a column at a time (`rounded`, `iso_utc`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from shared.timeutil import from_epoch

_ROW_BREAK = "}, {"


def dumps_document(doc: dict[str, Any]) -> str:
    if not doc:
        return "{}"
    line = json.JSONEncoder(separators=(", ", ": ")).encode  # one encoder for every item (json.dumps makes one a call)
    parts = []
    for key, value in doc.items():
        if isinstance(value, list) and value:
            text = "[\n" + _rows(value, line) + "\n  ]"
        else:
            text = json.dumps(value, indent=2).replace("\n", "\n  ")
        parts.append(f"  {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(parts) + "\n}"


def _rows(items: list, line) -> str:
    """`",\\n".join("    " + line(item) for item in items)`. A list of objects (the trades, the signals) is encoded
    in one call and broken at its items: between two objects of a list the encoder writes "}, {" (a text that cannot
    overlap itself), so the list holds it at least len(items) - 1 times; exactly that many means no other (nested
    objects, a string) and those are the boundaries. Otherwise the items are encoded one by one."""
    if all(type(item) is dict for item in items):
        text = line(items)[1:-1]
        if text.count(_ROW_BREAK) == len(items) - 1:
            return "    " + text.replace(_ROW_BREAK, "},\n    {")
    return ",\n".join("    " + line(item) for item in items)


def rounded(values: Sequence[float | None], digits: int) -> list[float | None]:
    """`[None if v is None else round(v, digits) for v in values]` (0 <= digits <= 15), the same values, in one
    numpy pass for the floats.

    round() gives the double nearest to the exact binary value rounded to `digits` decimals (half to even). Here
    y = v * 10**digits carries an error below 2**-52 |y|, so when y is further than 1e-9 max(1, |y|) from a
    half-integer its nearest integer k is the exact value's rounded one; k (below 2**50) and 10**digits are exact,
    so the IEEE quotient k / 10**digits is the double nearest to that decimal, as round() answers. Floats near a
    tie, huge or not finite, and anything not a float (an int stays an int), go through round() itself."""
    if not len(values):
        return []
    odd = [i for i, v in enumerate(values) if type(v) is not float]
    x = np.asarray(values if not odd else [v if type(v) is float else 0.0 for v in values], dtype=np.float64)
    scale = 10.0**digits
    with np.errstate(invalid="ignore", over="ignore"):
        y = x * scale
        ay = np.abs(y)
        sure = (ay < 2.0**50) & (np.abs(y - np.floor(y) - 0.5) > 1e-9 * np.maximum(ay, 1.0))
        out = (np.rint(y) / scale).tolist()
    for i in np.flatnonzero(~sure).tolist():
        out[i] = round(values[i], digits)
    for i in odd:
        out[i] = None if values[i] is None else round(values[i], digits)
    return out


def iso_utc(seconds: Sequence[int]) -> list[str]:
    """`from_epoch(x).isoformat()` of each whole second x, in one numpy pass ("YYYY-MM-DDTHH:MM:SS+00:00"): a
    year's trades and signals are 30,000 timestamps, and a datetime per timestamp cost a fresh backtest more than its
    JSON encoding. Anything but whole seconds in years 1-9999 goes through from_epoch itself."""
    x = np.asarray(seconds)
    if x.size == 0:
        return []
    if x.dtype.kind not in "iu" or x.min() < -62_135_596_800 or x.max() > 253_402_300_799:
        return [from_epoch(v).isoformat() for v in x.tolist()]
    text = np.datetime_as_string(x.astype(np.int64).astype("datetime64[s]"), unit="s")
    return [t + "+00:00" for t in text.tolist()]
