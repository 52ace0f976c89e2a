"""The message bus: one interface, an in-memory and a RabbitMQ back end."""

from shared.bus.base import Bus, Consumer, Delivery, Handler, InvalidMessage, Outgoing, QueueSpec, TransientError, Unroutable


def create_bus(url: str, *, delivery_limit: int = 5, prefetch: int = 32) -> Bus:
    """The back end for `url`: `memory://` (one process) or `amqp://...` (RabbitMQ)."""
    if url.startswith("memory://"):
        from shared.bus.memory import InMemoryBus

        return InMemoryBus(delivery_limit=delivery_limit, prefetch=prefetch)
    if url.startswith(("amqp://", "amqps://")):
        from shared.bus.rabbitmq import RabbitBus

        return RabbitBus(url, delivery_limit=delivery_limit, prefetch=prefetch)
    raise ValueError(f"unknown bus url {url!r}: use memory:// or amqp://user:pass@host:port/")


__all__ = ["Bus", "Consumer", "Delivery", "Handler", "InvalidMessage", "Outgoing", "QueueSpec", "TransientError", "Unroutable", "create_bus"]
