"""Run one executor alone, as its own process, on an MT5 terminal (or the MT5 simulator):

    python -m services.executor --account-id 1 --database-url sqlite+aiosqlite:///var/ex.db \
        --mt5-sim-port 18812 --server-time us_dst --suffix m --inbox var/inbox.jsonl --outbox var/outbox.jsonl

Without --mt5-sim-port the module comes from the settings (MetaTrader5 on Windows, mt5linux when SCALPER_MT5_HOST is set).
Without --inbox the bus is SCALPER_BUS_URL (RabbitMQ in distributed mode). SIGTERM (or Ctrl-C) stops it gracefully: the
broker call in flight finishes and is recorded. Prints "executor ready" once it consumes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from services.executor.brokers.mt5 import MT5Broker, module_from_settings
from services.executor.rules import PositionRules
from services.executor.service import ExecutorService
from services.executor.spool import SpoolBus
from shared.bus import create_bus
from shared.db.engine import create_engine, session_factory, upgrade
from shared.logging import configure_logging, get_logger
from shared.settings import Settings
from shared.timeutil import SystemClock

log = get_logger("services.executor")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m services.executor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--account-id", type=int, required=True)
    p.add_argument("--database-url", help="default SCALPER_DATABASE_URL")
    p.add_argument("--mt5-sim-port", type=int, help="talk to `python -m mt5sim.server` on 127.0.0.1:PORT (the simulator)")
    p.add_argument("--login", type=int)
    p.add_argument("--password")
    p.add_argument("--server")
    p.add_argument("--server-time", default="utc", help="the account's server clock: utc, us_dst, +2")
    p.add_argument("--suffix", default="", help="the broker's symbol suffix, e.g. m")
    p.add_argument("--max-volume", type=float, help="the account's cap on lots per order")
    p.add_argument("--allow-live", action="store_true", help="trade a real-money account (else only demo accounts)")
    p.add_argument("--inbox", type=Path, help="read intents and commands from this JSON-lines file instead of the bus")
    p.add_argument("--outbox", type=Path, help="append events to this JSON-lines file (with --inbox)")
    p.add_argument("--monitor-interval-s", type=float, help="default SCALPER_MONITOR_INTERVAL_S")
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in {"database_url": args.database_url, "monitor_interval_s": args.monitor_interval_s}.items() if v is not None}
    settings = Settings(**overrides)
    configure_logging(settings.log_format, settings.log_level)
    clock = SystemClock()
    if args.mt5_sim_port:
        from mt5sim.server import RemoteMT5

        def connect():
            return RemoteMT5("127.0.0.1", args.mt5_sim_port, timeout=120)
    else:
        connect = module_from_settings(settings)
    broker = MT5Broker(connect=connect, clock=clock, server_time=args.server_time, symbol_suffix=args.suffix, login=args.login,
                       password=args.password, server=args.server, allow_live=args.allow_live or settings.allow_live,
                       max_volume=args.max_volume)
    if args.inbox:
        bus = SpoolBus(args.inbox, args.outbox or args.inbox.with_name(args.inbox.stem + ".out.jsonl"), delivery_limit=settings.delivery_limit)
    else:
        bus = create_bus(settings.bus_url, delivery_limit=settings.delivery_limit, prefetch=settings.prefetch)
    engine = create_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    service = ExecutorService(bus=bus, sessions=session_factory(engine), clock=clock, settings=settings, broker=broker,
                              account_ids=[args.account_id], instance=f"ex-{args.account_id}", rules=PositionRules())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await bus.start()
    try:
        await service.start()
        print("executor ready", flush=True)
        await stop.wait()
        log.info("stop signal: finishing the call in flight")
    finally:
        await service.stop()
        with contextlib.suppress(Exception):
            await bus.close()
        await engine.dispose()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    upgrade(args.database_url or Settings().database_url)  # blocking: before the event loop starts
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
