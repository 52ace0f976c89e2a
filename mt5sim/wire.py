"""The simulator server's wire format: length-prefixed JSON frames whose values keep their Python types
(numpy rate arrays, MT5 records, tuples, datetimes, and the Decimal or numpy scalars the terminal must refuse)."""

from __future__ import annotations

import base64
import json
import socket
import struct
from datetime import datetime
from decimal import Decimal

import numpy as np

from mt5sim.records import RECORD_TYPES

MAX_FRAME = 64 * 1024 * 1024


def encode(value):
    """A JSON-ready form of `value`; raises TypeError for what a bridge cannot carry."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return {"__ndarray__": base64.b64encode(data.tobytes()).decode("ascii"), "dtype": _descr(data.dtype), "shape": list(data.shape)}
    if isinstance(value, np.generic):  # before int/float: numpy.float64 subclasses float
        return {"__npscalar__": value.dtype.str, "value": value.item()}
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, Decimal):
        return {"__decimal__": str(value)}
    if isinstance(value, datetime):
        return {"__datetime__": value.isoformat()}
    if isinstance(value, tuple) and type(value).__name__ in RECORD_TYPES and hasattr(value, "_fields"):
        return {"__record__": type(value).__name__, "values": [encode(v) for v in value]}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {"__dict__": [[encode(k), encode(v)] for k, v in value.items()]}
    raise TypeError(f"cannot send a {type(value).__name__} over the simulator bridge")


def decode(value):
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__ndarray__" in value:
        dtype = np.dtype([tuple(f) for f in value["dtype"]]) if isinstance(value["dtype"], list) else np.dtype(value["dtype"])
        raw = base64.b64decode(value["__ndarray__"])
        return np.frombuffer(raw, dtype=dtype).reshape(value["shape"]).copy()
    if "__npscalar__" in value:
        return np.dtype(value["__npscalar__"]).type(value["value"])
    if "__decimal__" in value:
        return Decimal(value["__decimal__"])
    if "__datetime__" in value:
        return datetime.fromisoformat(value["__datetime__"])
    if "__record__" in value:
        return RECORD_TYPES[value["__record__"]](*(decode(v) for v in value["values"]))
    if "__tuple__" in value:
        return tuple(decode(v) for v in value["__tuple__"])
    if "__dict__" in value:
        return {decode(k): decode(v) for k, v in value["__dict__"]}
    raise ValueError(f"unknown wire value {sorted(value)}")


def _descr(dtype: np.dtype):
    return [list(f) for f in dtype.descr] if dtype.names else dtype.str


def send_frame(sock: socket.socket, message: dict) -> None:
    body = json.dumps(message).encode("utf-8")
    sock.sendall(struct.pack(">I", len(body)) + body)


def recv_frame(sock: socket.socket) -> dict | None:
    """The next frame, or None when the peer closed the connection cleanly."""
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (size,) = struct.unpack(">I", head)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes is too large")
    body = _recv_exact(sock, size)
    if body is None:
        raise ConnectionError("connection closed inside a frame")
    return json.loads(body)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            if got == 0:
                return None
            raise ConnectionError("connection closed inside a frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
