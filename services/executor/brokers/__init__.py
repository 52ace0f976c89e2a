"""Broker back ends behind one interface (base.Broker): paper here, MT5 in a later issue."""

from services.executor.brokers.base import (
    AccountInfo,
    BarFedBroker,
    Broker,
    BrokerPosition,
    BrokerUnavailable,
    ClosedPosition,
    ModifyResult,
    OrderRequest,
    PlaceResult,
)

__all__ = [
    "AccountInfo",
    "BarFedBroker",
    "Broker",
    "BrokerPosition",
    "BrokerUnavailable",
    "ClosedPosition",
    "ModifyResult",
    "OrderRequest",
    "PlaceResult",
]
