"""Garbage collection in a long-running service: what start-up built is left out of every later collection.

After start-up a service process tracks about 200,000 container objects (modules, SQLAlchemy's mappers, pydantic's
schemas, FastAPI's routes), and a full collection walks them all: about 100 ms on this machine, during which the
event loop stands still. CPython runs one whenever enough new objects have survived, so in the embedded stack every
few hundred orders one of them paused an order by 100-150 ms. `gc.freeze()` moves the objects alive after start-up
to a permanent generation that collections skip (the standard library's remedy for exactly this); what is made later
is collected as before. The heap is unfrozen when the service stops, so a process that starts several apps (tests)
collects the first one's objects once it is gone.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def startup_frozen() -> Iterator[None]:
    """Collect once, freeze what is alive for the body (a running service), unfreeze after it."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
