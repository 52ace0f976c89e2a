"""Symbol specs (digits, pip size, lot sizes, stops level) and the pip, price and volume arithmetic built on them.

Shipped defaults cover gold and the major FX pairs; an MT5 broker's `symbol_info` overrides them.
Every `*_pips` value is converted with the symbol's own pip size, never a hard-coded 0.0001.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Side = Literal["buy", "sell"]


class SymbolSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str = Field(description="canonical instrument, without the broker's suffix")
    digits: int = Field(ge=0, le=8)
    point: float = Field(gt=0)
    pip_size: float = Field(gt=0)
    contract_size: float = Field(gt=0)
    volume_min: float = Field(gt=0)
    volume_step: float = Field(gt=0)
    volume_max: float = Field(gt=0)
    stops_level: int = Field(default=0, ge=0, description="minimum stop distance from price, in points")
    freeze_level: int = Field(default=0, ge=0, description="no modify/close this close to a stop, in points")
    base_currency: str = "USD"
    quote_currency: str = "USD"
    round_number_step: float = Field(gt=0, description="spacing of the round-number levels")
    typical_spread_points: int = Field(default=10, ge=0)

    @property
    def stops_distance(self) -> float:
        return self.stops_level * self.point

    def round_price(self, price: float) -> float:
        return round(price, self.digits)

    def pips_to_price(self, pips: float) -> float:
        return pips * self.pip_size

    def price_to_pips(self, distance: float) -> float:
        return distance / self.pip_size

    def points_to_price(self, points: float) -> float:
        return points * self.point

    def round_volume(self, volume: float) -> float:
        """Floor `volume` to the lot step and clamp it into [volume_min, volume_max]."""
        steps = math.floor(volume / self.volume_step + 1e-9)
        stepped = max(self.volume_min, min(self.volume_max, steps * self.volume_step))
        decimals = max(0, -math.floor(math.log10(self.volume_step)))
        return round(stepped, decimals)

    def profit(self, side: Side, volume: float, open_price: float, close_price: float) -> float:
        """P&L in the account currency (USD) of a position closed at `close_price`."""
        direction = 1.0 if side == "buy" else -1.0
        in_quote = direction * (close_price - open_price) * volume * self.contract_size
        if self.quote_currency == "USD":
            return in_quote
        if self.base_currency == "USD":
            return in_quote / close_price
        # A cross pair: without a USD rate we report in the quote currency (documented limitation).
        return in_quote

    def push_outside_stops(self, side: Side, price: float, sl: float | None, tp: float | None) -> tuple[float | None, float | None]:
        """Move stop and target at least the stops level away from `price`, rounded to the symbol's digits."""
        gap = max(self.stops_distance, self.point)
        if side == "buy":
            sl = None if sl is None else min(sl, price - gap)
            tp = None if tp is None else max(tp, price + gap)
        else:
            sl = None if sl is None else max(sl, price + gap)
            tp = None if tp is None else min(tp, price - gap)
        return (None if sl is None else self.round_price(sl), None if tp is None else self.round_price(tp))


def _fx(name: str, *, jpy: bool = False, spread: int = 12) -> SymbolSpec:
    return SymbolSpec(
        name=name,
        digits=3 if jpy else 5,
        point=0.001 if jpy else 0.00001,
        pip_size=0.01 if jpy else 0.0001,
        contract_size=100_000,
        volume_min=0.01,
        volume_step=0.01,
        volume_max=100.0,
        stops_level=0,
        base_currency=name[:3],
        quote_currency=name[3:6],
        round_number_step=0.5 if jpy else 0.005,
        typical_spread_points=spread,
    )


DEFAULT_SPECS: dict[str, SymbolSpec] = {
    "XAUUSD": SymbolSpec(
        name="XAUUSD",
        digits=2,
        point=0.01,
        pip_size=0.1,
        contract_size=100,
        volume_min=0.01,
        volume_step=0.01,
        volume_max=100.0,
        stops_level=0,
        base_currency="XAU",
        quote_currency="USD",
        round_number_step=5.0,
        typical_spread_points=12,
    ),
    **{n: _fx(n) for n in ("EURUSD", "GBPUSD", "AUDUSD", "NZDUSD", "USDCAD", "USDCHF", "EURGBP")},
    **{n: _fx(n, jpy=True) for n in ("USDJPY", "EURJPY", "GBPJPY")},
}


# Specs a broker reported (MT5 symbol_info), by canonical instrument: learnt from this process's own MT5 session or
# from the messages that carry them (RatesReply, BarWindow, AccountSnapshot), they override the shipped defaults, and a
# symbol missing from the shipped table trades once a broker has described it. One table per process: the pure
# functions that size, round and convert pips all ask `get_spec`.
_BROKER_SPECS: dict[str, SymbolSpec] = {}


def learn_spec(spec: SymbolSpec) -> None:
    """Take a broker's spec of an instrument (it overrides the shipped default from now on in this process)."""
    _BROKER_SPECS[spec.name] = spec


def broker_spec(symbol: str, suffix: str | None = None) -> SymbolSpec | None:
    """The spec a broker reported for this instrument, or None (then only the shipped default, if any, stands)."""
    return _BROKER_SPECS.get(canonical_symbol(symbol, suffix))


def has_spec(symbol: str, suffix: str | None = None) -> bool:
    """Whether a broker or the shipped table describes this instrument (get_spec would answer)."""
    return _known(canonical_symbol(symbol, suffix))


def forget_broker_specs() -> None:
    """Drop every learnt spec (tests)."""
    _BROKER_SPECS.clear()


def _known(name: str) -> bool:
    return name in _BROKER_SPECS or name in DEFAULT_SPECS


def canonical_symbol(symbol: str, suffix: str | None = None) -> str:
    """The instrument behind a broker's name: `XAUUSDm` -> `XAUUSD` (the account's suffix, or a known spec's name)."""
    if suffix and symbol.endswith(suffix) and len(symbol) > len(suffix):
        return symbol[: -len(suffix)]
    if _known(symbol):
        return symbol
    for name in [*_BROKER_SPECS, *DEFAULT_SPECS]:
        if symbol.upper().startswith(name) and re.fullmatch(r"[^A-Z0-9]*[a-z0-9.!_#-]*", symbol[len(name):]):
            return name
    return symbol


def routing_name(symbol: str) -> str:
    """A symbol made safe for a routing key: dots and other non-word characters become `_`."""
    return re.sub(r"\W", "_", symbol)


class UnknownSymbol(LookupError):
    pass


def get_spec(symbol: str, suffix: str | None = None) -> SymbolSpec:
    name = canonical_symbol(symbol, suffix)
    spec = _BROKER_SPECS.get(name) or DEFAULT_SPECS.get(name)
    if spec is None:
        known = ", ".join(sorted({*DEFAULT_SPECS, *_BROKER_SPECS}))
        raise UnknownSymbol(f"no symbol spec for {symbol!r}: no broker has described it; known: {known}")
    return spec
