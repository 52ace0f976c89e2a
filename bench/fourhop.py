"""The floors of bench_latency: a message through four hops, each hop one commit and one hand-off, and nothing else.

Embedded: four asyncio tasks joined by asyncio.Queues; each hop inserts one row into one SQLite file (WAL, synchronous
NORMAL, as the embedded engine runs it) and commits, then hands the message on. Distributed: four RabbitMQ quorum
queues (as the engine's work queues); each hop, on a delivery, inserts one row on PostgreSQL and commits, publishes a
persistent message to the next queue and waits for the broker's confirm, then acks. The latency runs from the first
hand-off to the fourth hop's commit. Not a bench of its own (no bench_ prefix): bench_latency runs it in its run.
"""

from __future__ import annotations

import asyncio
import time
import uuid

HOPS = 4


async def embedded_chain(path: str, samples: int, *, settle_s: float = 0.0) -> list[float]:
    """Latencies (ms) of `samples` messages through four asyncio + SQLite hops, each sent once the previous is done."""
    import aiosqlite

    conns = []
    for _ in range(HOPS):
        conn = await aiosqlite.connect(path)
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        conns.append(conn)
    await conns[0].execute("CREATE TABLE IF NOT EXISTS hop (id INTEGER PRIMARY KEY, hop INTEGER, body TEXT)")
    await conns[0].commit()
    queues = [asyncio.Queue() for _ in range(HOPS)]
    done: asyncio.Queue = asyncio.Queue()

    async def hop(i: int) -> None:
        while True:
            body = await queues[i].get()
            await conns[i].execute("INSERT INTO hop (hop, body) VALUES (?, ?)", (i, body))
            await conns[i].commit()
            await (queues[i + 1] if i + 1 < HOPS else done).put(body)

    tasks = [asyncio.create_task(hop(i)) for i in range(HOPS)]
    out = []
    try:
        for _ in range(samples):
            await asyncio.sleep(settle_s)
            t0 = time.perf_counter()
            await queues[0].put(uuid.uuid4().hex)
            await done.get()
            out.append((time.perf_counter() - t0) * 1000)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in conns:
            await conn.close()
    return out


async def distributed_chain(amqp_url: str, pg_dsn: str, samples: int, *, settle_s: float = 0.0) -> list[float]:
    """Latencies (ms) through four RabbitMQ + PostgreSQL hops (one commit and one confirmed persistent publish each)."""
    import aio_pika
    import asyncpg

    connection = await aio_pika.connect_robust(amqp_url)
    pool = await asyncpg.create_pool(pg_dsn, min_size=HOPS, max_size=HOPS)
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE IF NOT EXISTS fourhop (id BIGSERIAL PRIMARY KEY, hop INT, body TEXT)")
    names = [f"fourhop.{i}.{uuid.uuid4().hex[:6]}" for i in range(HOPS)]
    done: asyncio.Queue = asyncio.Queue()
    channels = []
    consumers = []  # (queue, consumer tag): cancelled before their queues are deleted
    try:
        for i, name in enumerate(names):
            channel = await connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=32)
            channels.append(channel)
            queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
            nxt = names[i + 1] if i + 1 < HOPS else None

            async def handle(message: aio_pika.abc.AbstractIncomingMessage, i=i, nxt=nxt, channel=channel) -> None:
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute("INSERT INTO fourhop (hop, body) VALUES ($1, $2)", i, message.body.decode())
                if nxt is not None:
                    await channel.default_exchange.publish(
                        aio_pika.Message(message.body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=nxt)
                await message.ack()
                if nxt is None:
                    done.put_nowait(message.body)

            consumers.append((queue, await queue.consume(handle)))
        first = channels[0]
        out = []
        for _ in range(samples):
            await asyncio.sleep(settle_s)
            t0 = time.perf_counter()
            await first.default_exchange.publish(
                aio_pika.Message(uuid.uuid4().hex.encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=names[0])
            await asyncio.wait_for(done.get(), 10)
            out.append((time.perf_counter() - t0) * 1000)
        return out
    finally:
        for queue, tag in consumers:
            await queue.cancel(tag)
        for channel, name in zip(channels, names, strict=False):
            await channel.queue_delete(name)
        await connection.close()
        await pool.close()
