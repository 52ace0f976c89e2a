"""The byte scan behind the long-line and field-count refusals: each line's offset, length and field count, checked
against Python's own split on random text, with blocks small enough that lines, CR LF pairs and runs of spaces
straddle block edges."""

from __future__ import annotations

import numpy as np
import pytest

from shared.loaders import WHITESPACE
from shared.loaders import text as loader_text


def _reference(data: bytes, delimiter: str):
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the file ends with a line end
    starts, lengths, fields, at = [], [], [], 0
    for raw in lines:
        body = raw[:-1] if raw.endswith(b"\r") else raw
        starts.append(at)
        lengths.append(len(body))
        if delimiter == WHITESPACE:
            fields.append(len(raw.split()))
        else:
            fields.append(body.count(delimiter.encode()) + 1 if body else 0)
        at += len(raw) + 1
    return starts, lengths, fields


@pytest.mark.parametrize("delimiter", [",", "\t", WHITESPACE])
@pytest.mark.parametrize("block", [1, 3, 7, 64])
def test_the_scan_matches_a_plain_split(tmp_path, monkeypatch, delimiter, block):
    monkeypatch.setattr(loader_text, "_SCAN_BYTES", block)
    rng = np.random.default_rng(block)
    alphabet = list(b"ab1.") + [ord(delimiter) if delimiter != WHITESPACE else 32, 32, 9, 13]
    for trial in range(20):
        rows = []
        for _ in range(int(rng.integers(0, 12))):
            n = int(rng.integers(0, 15))
            row = bytes(int(x) for x in rng.choice(alphabet, n)).replace(b"\r", b"")
            rows.append(row + (b"\r\n" if rng.random() < 0.5 else b"\n"))
        data = b"".join(rows)
        if rng.random() < 0.3:
            data += b"a" + (b"," if delimiter == "," else b" ") + b"b"  # a last line without a line end
        path = tmp_path / f"{trial}.txt"
        path.write_bytes(data)
        got = loader_text._scan_lines(path, delimiter)
        starts, lengths, fields = _reference(data, delimiter)
        if not data:
            starts, lengths, fields = [0], [0], [0]  # an empty file: one empty line, as before
        assert got.starts.tolist() == starts, data
        assert got.lengths.tolist() == lengths, data
        assert got.fields.tolist() == fields, data
