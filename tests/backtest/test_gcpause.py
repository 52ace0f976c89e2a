"""The cyclic collector is paused over a backtest and given back as it was found (scalper/backtest/gcpause.py)."""

from __future__ import annotations

import gc
import inspect

import pytest

from scalper.backtest.gcpause import cyclic_gc_paused, gc_paused


def test_paused_inside_and_restored_after_even_on_error():
    assert gc.isenabled()
    with cyclic_gc_paused():
        assert not gc.isenabled()
        with cyclic_gc_paused():  # nested: the inner one must not switch it back on
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ValueError), cyclic_gc_paused():
        raise ValueError("boom")
    assert gc.isenabled()


def test_a_caller_that_paused_it_keeps_it_paused():
    gc.disable()
    try:
        with cyclic_gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_decorated_function_keeps_its_signature_and_pauses():
    def fn(a: int, *, b: str = "x") -> bool:
        """doc"""
        return gc.isenabled()

    wrapped = gc_paused(fn)
    assert wrapped(1, b="y") is False and gc.isenabled()
    assert inspect.signature(wrapped) == inspect.signature(fn) and wrapped.__doc__ == "doc" and wrapped.__wrapped__ is fn


def test_the_backtest_command_and_run_backtest_are_paused():
    from scalper.backtest.engine import run_backtest
    from scalper.commands.backtest import backtest

    assert run_backtest.__wrapped__ and backtest.__wrapped__
    assert "file" in inspect.signature(backtest).parameters  # typer reads the command's own options
