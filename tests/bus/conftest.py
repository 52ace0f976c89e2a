"""One bus test body, every back end: the in-memory bus always, RabbitMQ when the machine has it."""

from __future__ import annotations

import pytest

from shared.bus.memory import InMemoryBus


@pytest.fixture(params=["memory"])
async def bus(request):
    if request.param == "memory":
        b = InMemoryBus(delivery_limit=3, redelivery_delay_s=0.001)
    await b.start()
    yield b
    await b.close()
