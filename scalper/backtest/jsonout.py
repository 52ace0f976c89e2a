"""The `--json` document as text: the small parts indented as `json.dumps(indent=2)` writes them, each item of a
top-level list (a trade, a signal) on one line. json's indenting encoder is pure Python and took longer than the
backtest's decisions on a year's 6,700 trades; one line per item goes through its C encoder and stays readable."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from shared.timeutil import from_epoch


def dumps_document(doc: dict[str, Any]) -> str:
    if not doc:
        return "{}"
    line = json.JSONEncoder(separators=(", ", ": ")).encode  # one encoder for every item (json.dumps makes one a call)
    parts = []
    for key, value in doc.items():
        if isinstance(value, list) and value:
            body = ",\n".join("    " + line(item) for item in value)
            text = "[\n" + body + "\n  ]"
        else:
            text = json.dumps(value, indent=2).replace("\n", "\n  ")
        parts.append(f"  {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(parts) + "\n}"


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
