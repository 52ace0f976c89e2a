"""startup_frozen: what is alive when a service has started is left out of later collections, until it stops."""

from __future__ import annotations

import gc
import weakref

import pytest

from shared.heap import startup_frozen


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_objects_alive_at_start_are_frozen_and_unfrozen_at_stop():
    kept = Node()
    with startup_frozen():
        assert gc.get_freeze_count() > 1000, "start-up's objects (modules, classes) are in the permanent generation"
        assert not any(o is kept for o in gc.get_objects()), "a frozen object is no longer walked by collections"
        made_later = Node()
        assert any(o is made_later for o in gc.get_objects(generation=0)), "what the service makes later is collected as before"
    assert gc.get_freeze_count() == 0
    assert any(o is kept for o in gc.get_objects())


def test_a_failing_service_still_unfreezes():
    with pytest.raises(RuntimeError), startup_frozen():
        raise RuntimeError("stopped")
    assert gc.get_freeze_count() == 0


def test_garbage_of_start_up_is_collected_not_frozen():
    garbage = Node()
    gone = weakref.ref(garbage)
    del garbage  # unreachable, yet alive until the cyclic collector runs
    with startup_frozen():
        assert gone() is None, "the collection before the freeze frees it instead of pinning it for the service's life"
