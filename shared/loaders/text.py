"""The file as bytes: its encoding, whole-line quotes (a UTF-8 copy when pandas cannot read it as is), the sniffed first
lines, and a numpy scan of every line's offset, length and field count."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.loaders.layout import WHITESPACE
from shared.loaders.report import UnknownFormat

MAX_LINE_BYTES = 4096  # a longer line is no M1 row: refused by its line number, never read whole
_SNIFF_BYTES = 64 * 1024  # detection reads this much of the file's start
_SCAN_BYTES = 1 << 20  # the byte scan's block


def _is_text(text: str) -> bool:
    controls = sum(1 for ch in text[:4096] if ord(ch) < 32 and ch not in "\t\r\n")
    return controls == 0


def _encoding_of(head: bytes, path: str | Path) -> str:
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    if b"\x00" in head[:4096]:
        even, odd = head[0:4096:2], head[1:4096:2]
        for enc, zeros in (("utf-16-le", odd), ("utf-16-be", even)):
            if zeros and zeros.count(0) == len(zeros) and _is_text(head[:4096].decode(enc, errors="replace")):
                return enc
        raise UnknownFormat(f"{path} is not a text file (it holds NUL bytes): export the bars as CSV or text")
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8-sig"
    try:
        cut = head.rfind(b"\n") if len(head) >= _SNIFF_BYTES else len(head)
        head[: cut if cut > 0 else len(head)].decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        return "latin-1"


def _wrapped_in_quotes(lines: list[str]) -> bool:
    """Every line one quoted string (`"2024.05.29\t00:00\t1.1..."`): the quotes wrap the line, not its fields."""
    body = [line.strip() for line in lines if line.strip()]
    return bool(body) and all(
        len(s) > 2 and s[0] == '"' and s[-1] == '"' and '"' not in s[1:-1].replace('""', "") for s in body
    )


def _unquote_line(line: str) -> str:
    s = line.rstrip("\r")
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        s = s[1:-1].rstrip("\r").replace('""', '"')
    return s


@contextmanager
def _utf8_copy(path: Path, encoding: str, unquote: bool) -> Iterator[Path]:
    """A temporary UTF-8 copy of the file, line for line (so line numbers hold), decoded and/or unquoted by blocks."""
    fd, name = tempfile.mkstemp(prefix="m1-", suffix=".txt")
    try:
        with open(path, encoding=encoding, errors="replace", newline="") as src, os.fdopen(fd, "w", encoding="utf-8", newline="") as dst:
            carry = ""
            while block := src.read(_SCAN_BYTES):
                text = carry + block
                cut = text.rfind("\n")
                if cut < 0 and len(text) < 4 * MAX_LINE_BYTES:
                    carry = text
                    continue
                done, carry = (text[: cut + 1], text[cut + 1 :]) if cut >= 0 else (text, "")
                if unquote:
                    done = "\n".join(_unquote_line(line) for line in done.split("\n"))
                dst.write(done.lstrip("\ufeff") if dst.tell() == 0 else done)
            if carry:
                dst.write(_unquote_line(carry) if unquote else carry)
        yield Path(name)
    finally:
        os.unlink(name)


def _sniff(path: Path) -> tuple[str, bool, list[str], bool]:
    """(encoding, lines wrapped in quotes, the first lines decoded, whether they are the whole file)."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    encoding = _encoding_of(head, path)
    text = head.decode(encoding, errors="replace").lstrip("\ufeff")
    whole = len(head) < _SNIFF_BYTES
    lines = text.split("\n")
    if not whole:
        lines = lines[:-1]  # the block may end inside a line
    return encoding, _wrapped_in_quotes(lines[:200]), lines, whole


@contextmanager
def _readable(path: Path) -> Iterator[tuple[Path, str, list[str], bool, list[str]]]:
    """The file as bytes the scan and pandas read: itself, or a UTF-8 copy of a UTF-16 or quote-wrapped one."""
    encoding, quoted, lines, whole = _sniff(path)
    notes = []
    if quoted:
        notes.append("every line is wrapped in quotes: read without them")
    if encoding.startswith("utf-16") or quoted:
        with _utf8_copy(path, encoding, quoted) as copy:
            _, _, lines, whole = _sniff(copy)
            yield copy, "utf-8", lines, whole, notes
    else:
        yield path, encoding, lines, whole, notes


@dataclass(frozen=True, slots=True)
class _Lines:
    starts: np.ndarray  # byte offset of each line
    lengths: np.ndarray  # bytes, without the line end
    fields: np.ndarray  # fields on the line (0 for a blank line)


def _scan_lines(path: Path, delimiter: str) -> _Lines:
    """Each line's offset, length and field count, by blocks with numpy: no line is ever held as a string."""
    sep = None if delimiter == WHITESPACE else ord(delimiter)
    ends_parts, count_parts, cr_parts = [], [], []
    carry_count = 0  # marks on the line the previous block ended inside
    prev_space, prev_byte = True, 0
    pos = 0
    with open(path, "rb") as f:
        while block := f.read(_SCAN_BYTES):
            a = np.frombuffer(block, np.uint8)
            nl = np.flatnonzero(a == 10)
            if sep is None:
                space = (a == 32) | (a == 9) | (a == 13) | (a == 10)
                marks = ~space  # a field starts where a non-space follows a space
                marks[1:] &= space[:-1]
                marks[0] &= prev_space
                prev_space = bool(space[-1])
            else:
                marks = a == sep
            # Marks per line: one sum per line segment (each segment holds its line end, so none is empty); the
            # segment after the last line end is the start of a line the next block ends.
            seg = np.concatenate(([0], nl + 1))
            seg = seg[seg < len(a)]
            sums = np.add.reduceat(marks, seg, dtype=np.int32) if len(seg) else np.zeros(0, np.int32)
            per_line = sums[: len(nl)].astype(np.int64)
            tail = int(sums[len(nl)]) if len(sums) > len(nl) else 0
            if len(nl):
                per_line[0] += carry_count
                carry_count = tail
            else:
                carry_count += tail
            count_parts.append(per_line)
            before = np.where(nl > 0, a[np.maximum(nl - 1, 0)], prev_byte)
            cr_parts.append(before == 13)  # a CR LF line end: the CR is no part of the line
            prev_byte = int(a[-1])
            ends_parts.append(nl + pos)
            pos += len(block)
    ends = np.concatenate(ends_parts) if ends_parts else np.zeros(0, np.int64)
    counts = np.concatenate(count_parts) if count_parts else np.zeros(0, np.int64)
    has_cr = np.concatenate(cr_parts) if cr_parts else np.zeros(0, bool)
    if len(ends) == 0 or ends[-1] != pos - 1:  # a last line without a line end
        ends = np.append(ends, pos)
        counts = np.append(counts, carry_count)
        has_cr = np.append(has_cr, prev_byte == 13)
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    lengths = np.maximum((ends - starts) - has_cr, 0).astype(np.int64)
    fields = counts if sep is None else np.where(lengths > 0, counts + 1, 0)
    return _Lines(starts, lengths, fields)


_WINDOW = 2048  # a line of MAX_LINE_BYTES or more covers a whole aligned window of this many bytes
assert 2 * _WINDOW <= MAX_LINE_BYTES and _SCAN_BYTES % _WINDOW == 0


@dataclass(frozen=True, slots=True)
class Soundness:
    lines: int  # lines from the start offset on (a last line without a line feed counts)
    sound: bool  # no line of MAX_LINE_BYTES or more, no quote, every CR the start of a CR LF
    letters: bool  # an `n`, `i` (any case): the only letters a number could hold (`nan`, `inf`)


def _soundness(path: Path, start: int) -> Soundness:
    """The fast path's scan of the bytes from `start` on, at a fraction of `_scan_lines`' cost: no line is measured,
    but every aligned window of _WINDOW bytes must hold a line feed, so no line reaches MAX_LINE_BYTES."""
    lines, sound, letters, last = 0, True, False, b""
    with open(path, "rb") as f:
        f.seek(start)
        while sound and (block := f.read(_SCAN_BYTES)):
            a = np.frombuffer(block, np.uint8)
            lf = a == 10
            lines += int(np.count_nonzero(lf))
            full = len(a) // _WINDOW * _WINDOW
            if not lf[:full].reshape(-1, _WINDOW).any(axis=1).all() or b'"' in block:
                sound = False
            if b"\r" in block:  # a lone CR ends a line for the parsers, not for the line numbers
                cr = np.flatnonzero(a == 13)
                inside = cr[cr + 1 < len(a)]
                sound = sound and bool(lf[inside + 1].all()) and (len(inside) == len(cr) or f.read(1) == b"\n")
                if len(inside) != len(cr):
                    f.seek(-1, 1)
            letters = letters or any(c in block for c in (b"n", b"N", b"i", b"I"))
            last = block
    if last and last[-1:] != b"\n":
        lines += 1
    return Soundness(lines, sound, letters)


def _line_text(path: Path, lines: _Lines, i: int, encoding: str) -> str:
    with open(path, "rb") as f:
        f.seek(int(lines.starts[i]))
        return f.read(int(lines.lengths[i])).decode(encoding.replace("-sig", ""), errors="replace")
