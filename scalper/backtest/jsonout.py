"""The `--json` document as text: the small parts indented as `json.dumps(indent=2)` writes them, each item of a
top-level list (a trade, a signal) on one line. json's indenting encoder is pure Python and took longer than the
backtest's decisions on a year's 6,700 trades; one line per item goes through its C encoder and stays readable."""

from __future__ import annotations

import json
from typing import Any


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
