"""TA-Lib without its pandas import: `from shared.ta import talib`.

`import talib` imports pandas (and polars, when installed) only to wrap each function so that a Series in gives a
Series out; every caller here passes numpy arrays, which the wrapper hands to the same C function untouched. pandas
is most of a fresh `scalper backtest`'s import time when nothing else needs it, so talib is imported here with pandas
and polars marked absent (a None in sys.modules makes `import pandas` raise ModuleNotFoundError, which talib takes as
"not installed"), then unmarked. The functions are TA-Lib's own either way; a process that imported talib (or
pandas) before this module keeps talib as it was imported.
"""

from __future__ import annotations

import sys

_WRAPPED_FOR = ("pandas", "polars")


def _import_talib():
    if "talib" in sys.modules:
        return sys.modules["talib"]
    marked = [name for name in _WRAPPED_FOR if name not in sys.modules]
    for name in marked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import talib
    finally:
        for name in marked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return talib


talib = _import_talib()
