"""Scale benchmark on RabbitMQ and PostgreSQL: one strategy worker's CPU per window, and a scan of 10,000 bots over
200 symbols evaluated by two workers and decided, each beside its floor measured in the same run.

The 200 symbols are aliases of gold (`SYM000`..`SYM199`, gold's spec) fed with real gold windows at different
offsets, so every symbol has its own bars. Workers are processes of this file (`--worker`), which register the
alias specs and run the strategy service's StrategyWorker; decision runs in this process on PostgreSQL.

- Worker CPU per window: one worker drains pre-queued windows (its CPU from /proc), beside the floors that bound
  it, on the same windows: (a) a bare aio-pika consumer process that only receives and acks each message (same
  bodies, same kind of queue, same prefetch, same broker; its CPU from /proc), (b) decoding the BarWindow body, and
  (c) the four strategies evaluated once on a decoded window (both in this process).
- The scan: a window per symbol published, until every window is decided; the floor is the same scan with a
  consumer that only takes each ScanResult off the queue (the workers, the broker and the bus, no decision).

    .venv/bin/python bench/bench_scale.py [--symbols 200] [--bots-per-symbol 50] [--windows 600] [--repeats 3]

Each figure is measured `--repeats` times and the median printed: on two cores shared with the broker one run of a
few seconds varies by 15 % or more from the next. Two workers against one is not measured: on two cores that also
run the broker and this process it cannot show how competing consumers scale.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shared.bus import topology  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.symbols import DEFAULT_SPECS  # noqa: E402


def alias(i: int) -> str:
    return f"SYM{i:03d}"


def register_aliases(n: int) -> None:
    """Gold's spec under n alias names (in this process), so strategies and risk know the bench's symbols."""
    gold = DEFAULT_SPECS["XAUUSD"]
    for i in range(n):
        DEFAULT_SPECS.setdefault(alias(i), gold.model_copy(update={"name": alias(i)}))


# --- a worker process --------------------------------------------------------------------------------------------


async def run_worker(url: str, symbols: int) -> None:
    from services.strategy.service import StrategyWorker
    from shared.bus import create_bus
    from shared.logging import configure_logging

    configure_logging("text", "WARNING")
    register_aliases(symbols)
    settings = Settings(bus_url=url, log_level="WARNING")
    bus = create_bus(url, delivery_limit=settings.delivery_limit, prefetch=settings.prefetch)
    await bus.start()
    worker = StrategyWorker(bus=bus, settings=settings)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # "go": every worker starts consuming at once
    await worker.start()
    await asyncio.Event().wait()


async def run_acker(url: str, queue: str, count: int, prefetch: int) -> None:
    """The ack-only floor: a bare aio-pika consumer (the library the workers use) that takes each message of `queue`
    and acks it, nothing else, with the workers' prefetch; "done" once `count` are acked."""
    import aio_pika

    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    source = await channel.declare_queue(queue, passive=True)
    acked = 0
    done = asyncio.Event()

    async def on_message(message) -> None:
        nonlocal acked
        await message.ack()
        acked += 1
        if acked >= count:
            done.set()

    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # "go"
    await source.consume(on_message)
    await done.wait()
    print("done", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # the parent reads this process's CPU first
    await connection.close()


def start_workers(url: str, n: int, symbols: int) -> list[subprocess.Popen]:
    procs = []
    for _ in range(n):
        p = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--url", url, "--symbols", str(symbols)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO,
        )
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", "worker did not start"
        procs.append(p)
    return procs


def go(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores, from /proc/stat (Linux)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


@dataclass(frozen=True)
class Drain:
    """One throughput run: its rate and where the machine's CPU went while the workers drained the queue."""

    windows_per_s: float
    worker_cpu_ms: float  # per window, all workers together
    rest_cpu_ms: float  # per window: RabbitMQ, this process (the stand-in for decision), the OS, anything else running
    busy: float  # share of all cores in use


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


# --- the bench -----------------------------------------------------------------------------------------------


async def prepare(url: str, symbols: int, bots_per_symbol: int):
    """One user, `bots_per_symbol` paper accounts, one auto-trading bot per (account, symbol): the plan."""
    from sqlalchemy import insert, select

    from services.decision.bots import ensure_demo, strategy_names
    from services.decision.plan import build_plan
    from shared.db.engine import create_engine, session_factory, transaction, upgrade
    from shared.db.models import Bot, BrokerAccount, User
    from shared.strategies.catalog import lookback_for

    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    async with transaction(sessions) as session:
        await ensure_demo(session=session)
        demo = (await session.execute(select(User).where(User.name == "demo"))).scalar_one()
        await session.execute(select(Bot))  # warm
        accounts = []
        for a in range(bots_per_symbol):
            account = BrokerAccount(user_id=demo.id, name=f"scale-{a}", broker="paper", server_time="utc", is_demo=True, is_active=True)
            session.add(account)
            accounts.append(account)
        await session.flush()
        names = strategy_names("scalper")
        rows = [
            {"user_id": demo.id, "account_id": account.id, "symbol": alias(i), "enabled_strategies": names, "strategy_params": {},
             "auto_trade": True, "name": f"{alias(i)}-{account.id}"}
            for i in range(symbols) for account in accounts
        ]
        for k in range(0, len(rows), 2000):
            await session.execute(insert(Bot), rows[k:k + 2000])
    async with sessions() as session:
        plan = await build_plan(session=session, lookback_for=lookback_for, min_lookback=100)
    return engine, sessions, {p.symbol: p for p in plan.symbols}


def windows_for(plan: dict, count_per_symbol: int, gold: Path):
    """Real gold windows: symbol i takes the bars at offset i*7 minutes (+1 minute per further window)."""
    from services.market_data.feeds.replay import ReplayFeed
    from shared.messages import BarColumns, BarWindow

    feed = ReplayFeed(gold, "XAUUSD")
    out = []
    for k in range(count_per_symbol):
        for i, (symbol, entry) in enumerate(sorted(plan.items())):
            at = feed.start_time() + timedelta(minutes=i * 7 + k)
            bars = feed.closed_bars("XAUUSD", until=at, count=entry.lookback)
            out.append(BarWindow(symbol=symbol, bars=BarColumns.from_bars(bars), closed_through=at, source="bench",
                                 subscriptions=entry.subscriptions))
    return out


async def publish_all(bus, windows) -> float:
    t0 = time.perf_counter()
    await asyncio.gather(*(
        bus.publish(w, exchange=topology.MARKET_BARS, routing_key=topology.bars_key("1m", w.symbol)) for w in windows
    ))
    return time.perf_counter() - t0


async def throughput(url: str, windows, workers: int, symbols: int, *, consume: bool = False) -> Drain:
    """Windows per second through the strategy stage: the queue pre-filled, then `workers` processes drain it; done
    when every window's ScanResult is in decision.signals.

    By default nobody consumes decision.signals (the count is read from the queue), so the two cores hold only the
    stage: the workers and RabbitMQ. `consume=True` adds a consumer in this process that decodes every output, as a
    decision service on the same machine would; its CPU then counts against the stage's."""
    from shared.bus import create_bus
    from shared.messages import ScanResult

    expected = len(windows)  # one ScanResult per window
    bus = create_bus(url)
    await bus.start()
    await bus.declare_queue(topology.STRATEGY_BARS)
    await bus.delete_queue(topology.DECISION_SIGNALS.name)
    await bus.declare_queue(topology.DECISION_SIGNALS)
    reports = 0
    done = asyncio.Event()

    async def count(message, delivery) -> None:
        nonlocal reports
        if isinstance(message, ScanResult):
            reports += 1
            if reports >= len(windows):
                done.set()

    async def all_queued() -> None:
        # Each look at the queue opens a channel: about 2 ms of CPU here and in the broker, taken from the two cores
        # the stage runs on (polling every 10 ms cost 0.7-1.3 ms per window). So look rarely while the queue is far
        # from full and every 10 ms near the end: a few dozen looks, the end still timed within 10 ms.
        started = time.perf_counter()
        while (depth := await bus.queue_depth(topology.DECISION_SIGNALS.name)) < expected:
            rate = depth / (time.perf_counter() - started)
            remaining_s = (expected - depth) / rate if rate > 0 else 0.25
            await asyncio.sleep(min(0.25, max(0.01, remaining_s / 2)))
        done.set()

    consumer = await bus.consume(topology.DECISION_SIGNALS, count, prefetch=500) if consume else None
    await publish_all(bus, windows)
    procs = []
    try:
        procs = await asyncio.to_thread(start_workers, url, workers, symbols)
        worker_before = sum(cpu_seconds(p.pid) for p in procs)
        busy_before, total_before = machine_cpu_seconds()
        started = time.perf_counter()
        go(procs)
        watcher = None if consume else asyncio.create_task(all_queued())
        await asyncio.wait_for(done.wait(), 600)
        elapsed = time.perf_counter() - started
        if watcher is not None:
            await watcher
        worker_cpu = sum(cpu_seconds(p.pid) for p in procs) - worker_before
        busy_after, total_after = machine_cpu_seconds()
    finally:
        stop(procs)
        if consumer is not None:
            await consumer.cancel()
        await bus.delete_queue(topology.DECISION_SIGNALS.name)  # the next run counts from an empty queue
        await bus.close()
    busy = busy_after - busy_before
    per_window_ms = 1000 / len(windows)
    return Drain(windows_per_s=len(windows) / elapsed, worker_cpu_ms=worker_cpu * per_window_ms,
                 rest_cpu_ms=max(0.0, busy - worker_cpu) * per_window_ms, busy=busy / max(total_after - total_before, 1e-9))


ACK_FLOOR_QUEUE = "bench.ack_floor"


async def ack_floor(url: str, windows) -> float:
    """CPU per message, in µs, of a bare aio-pika consumer that only receives and acks the same windows (same bodies,
    same kind of queue, same prefetch) from the same broker: what any worker on this stack pays before it decodes."""
    from shared.bus import create_bus
    from shared.bus.base import QueueSpec

    spec = QueueSpec(ACK_FLOOR_QUEUE, bindings=((topology.MARKET_BARS, "ackfloor.#"),))
    bus = create_bus(url)
    await bus.start()
    proc = None
    try:
        await bus.delete_queue(ACK_FLOOR_QUEUE)
        await bus.declare_queue(spec)
        await asyncio.gather(*(bus.publish(w, exchange=topology.MARKET_BARS, routing_key=f"ackfloor.{w.symbol}") for w in windows))
        proc = subprocess.Popen(
            [sys.executable, __file__, "--acker", "--url", url, "--queue", ACK_FLOOR_QUEUE, "--count", str(len(windows)),
             "--prefetch", str(Settings().prefetch)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO,
        )
        assert proc.stdout is not None and proc.stdin is not None
        assert await asyncio.to_thread(proc.stdout.readline) == "ready\n", "ack-only consumer did not start"
        before = cpu_seconds(proc.pid)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 600) == "done\n", "ack-only consumer failed"
        used = cpu_seconds(proc.pid) - before
        proc.stdin.write("bye\n")
        proc.stdin.flush()
    finally:
        if proc is not None:
            stop([proc])
        await bus.delete_queue(ACK_FLOOR_QUEUE)
        await bus.close()
    return used * 1e6 / len(windows)


@dataclass(frozen=True)
class Scan:
    elapsed_s: float  # first publish -> every window decided (or, the floor, every ScanResult taken)
    cpu_s: float  # this process's CPU meanwhile: decision's, or the floor's consumer's
    workers_cpu_s: float  # the two strategy workers' CPU meanwhile


async def scan(url: str, pg: str, windows, symbols: int, *, decide: bool) -> Scan:
    """One scan (a window per symbol, every bot subscribed), two workers: seconds from the first publish until every
    window is decided (`decide`), or, the floor, until every window's ScanResult is taken off decision's queue; and
    the CPU seconds of this process (decision's, or the floor's consumer's) and of the workers meanwhile."""
    from scalper.serve import SharedClock
    from services.decision.service import DecisionService
    from shared.bus import create_bus
    from shared.db.engine import create_engine, session_factory
    from shared.messages import ScanResult
    from shared.timeutil import utcnow

    register_aliases(symbols)
    settings = Settings(bus_url=url, database_url=pg, scan_interval_s=3600, order_ttl_s=3600, log_level="WARNING")
    engine = create_engine(pg)
    async with engine.begin() as conn:  # each run decides a fresh scan: no earlier run's orders hold the bots' slots
        from sqlalchemy import text

        await conn.execute(text("TRUNCATE outbox, audit_log, decisions, signals RESTART IDENTITY"))
    bus = create_bus(url)
    start = windows[0].closed_through
    decided = 0
    done = asyncio.Event()
    decision = consumer = None
    if decide:
        decision = DecisionService(bus=bus, sessions=session_factory(engine), clock=SharedClock(start, utcnow(), 1.0), settings=settings)
        original = decision.handle_scan_report

        async def counted(report, delivery=None, **kw):
            nonlocal decided
            await original(report, delivery, **kw)
            decided += 1
            if decided >= len(windows):
                done.set()

        decision.handle_scan_report = counted  # type: ignore[method-assign]
        await decision.start()
        while decision.last_plan is None:  # steady state: the plan of the 10,000 bots is built before the scan comes
            await asyncio.sleep(0.05)
    else:
        await bus.start()
        await bus.delete_queue(topology.DECISION_SIGNALS.name)
        await bus.declare_queue(topology.DECISION_SIGNALS)

        async def taken(message, delivery) -> None:
            nonlocal decided
            if isinstance(message, ScanResult):
                decided += 1
                if decided >= len(windows):
                    done.set()

        consumer = await bus.consume(topology.DECISION_SIGNALS, taken, prefetch=settings.prefetch)
    # The accounts' order queues (no executor runs here: the intents wait in them, as for a busy executor).
    for account_id in sorted({sub.account_id for w in windows for sub in w.subscriptions}):
        await bus.declare_queue(topology.executor_orders_queue(account_id))
    procs = await asyncio.to_thread(start_workers, url, 2, symbols)
    go(procs)
    await asyncio.sleep(1.0)  # both consumers attached
    try:
        t0, c0, w0 = time.perf_counter(), time.process_time(), sum(cpu_seconds(p.pid) for p in procs)
        await publish_all(bus, windows)
        await asyncio.wait_for(done.wait(), 600)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        workers_cpu = sum(cpu_seconds(p.pid) for p in procs) - w0
    finally:
        stop(procs)
        if decision is not None:
            await decision.stop()
        if consumer is not None:
            await consumer.cancel()
        for account_id in sorted({sub.account_id for w in windows for sub in w.subscriptions}):
            await bus.delete_queue(topology.executor_orders_queue(account_id).name)
        await bus.close()
        await engine.dispose()
    return Scan(elapsed_s=elapsed, cpu_s=cpu, workers_cpu_s=workers_cpu)


async def decision_counts(pg: str) -> dict[str, int]:
    from sqlalchemy import func, select

    from shared.db.engine import create_engine, session_factory
    from shared.db.models import Decision

    engine = create_engine(pg)
    try:
        async with session_factory(engine)() as session:
            return dict((await session.execute(select(Decision.action, func.count()).group_by(Decision.action))).all())
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class WorkerFloors:
    """Per window, µs of CPU in this process, medians of three passes over the same windows."""

    decode: float  # the BarWindow body to its message (shared.messages.decode: JSON parse and validation)
    decode_bars: float  # the same and its columns as arrays (what the strategies read)
    strategies: float  # each distinct strategy (the four) evaluated once on a window decoded beforehand
    whole: float  # the worker's handling without the bus: decode, scan_window (fan-out to every bot), encode


def worker_floor(windows) -> WorkerFloors:
    """The parts of a worker's work on each window, measured apart in this process on the same windows."""
    from services.strategy.service import scan_window
    from shared.messages import ScanResult, decode
    from shared.strategies.base import EvalContext, WindowCache
    from shared.strategies.catalog import CATALOG
    from shared.symbols import get_spec
    from shared.timeutil import utcnow

    bodies = [w.encode() for w in windows]
    decoded = [decode("BarWindow", body)[0] for body in bodies]
    runs: dict[str, list[float]] = {"decode": [], "decode_bars": [], "strategies": [], "whole": []}

    def timed(name: str, each) -> None:
        c0 = time.process_time()
        for item in (decoded if name == "strategies" else bodies):
            each(item)
        runs[name].append((time.process_time() - c0) * 1e6 / len(bodies))

    def strategies(window) -> None:
        bars = window.bars.to_bars()  # not counted below: subtracted with the decode + arrays figure's own
        ctx = EvalContext(spec=get_spec(window.symbol), levels=window.levels, cache=WindowCache(bars))
        configs = {cfg.name: cfg for sub in window.subscriptions for cfg in sub.strategies}
        for name, cfg in configs.items():
            CATALOG.get(name).evaluate(bars, ctx, CATALOG.parse_params(name, cfg.params))

    def whole(body) -> None:
        window, _ = decode("BarWindow", body)
        signals, report = scan_window(window, catalog=CATALOG, now=utcnow())
        ScanResult(signals=tuple(signals), report=report).encode()

    to_bars: list[float] = []
    for _ in range(3):
        timed("decode", lambda body: decode("BarWindow", body))
        timed("decode_bars", lambda body: decode("BarWindow", body)[0].bars.to_bars())
        c0 = time.process_time()
        for window in decoded:
            window.bars.to_bars()
        to_bars.append((time.process_time() - c0) * 1e6 / len(bodies))
        timed("strategies", strategies)
        timed("whole", whole)
    med = {name: statistics.median(values) for name, values in runs.items()}
    return WorkerFloors(decode=med["decode"], decode_bars=med["decode_bars"],
                        strategies=max(0.0, med["strategies"] - statistics.median(to_bars)), whole=med["whole"])


def services_problem() -> str | None:
    from tests.distributed.cluster import services_problem as problem

    return problem()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--bots-per-symbol", type=int, default=50)
    parser.add_argument("--windows", type=int, default=600, help="windows one worker drains for its CPU per window")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement")
    parser.add_argument("--acker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prefetch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(run_worker(args.url, args.symbols))
        return
    if args.acker:
        asyncio.run(run_acker(args.url, args.queue, args.count, args.prefetch))
        return

    from shared.logging import configure_logging
    from tests.distributed import cluster as kit

    configure_logging("text", "WARNING")
    register_aliases(args.symbols)
    gold = Settings().data_dir / "XAUUSD_M1.csv"
    problem = services_problem() or (None if gold.is_file() else f"{gold} is absent (set SCALPER_DATA_DIR)")
    if problem:
        print(f"skipped: {problem}")
        return
    vhost = kit.add_vhost()
    pg = kit.create_database()
    url = kit.amqp_url(vhost)
    drains, acks, scans, floors, decided = [], [], [], [], {}
    try:
        async def build():
            engine, _, plan = await prepare(pg, args.symbols, args.bots_per_symbol)
            await engine.dispose()
            return plan

        plan = asyncio.run(build())
        per = max(1, args.windows // args.symbols)
        load = windows_for(plan, per, gold)
        parts = worker_floor(load[: min(len(load), 200)])
        scan_sets = windows_for(plan, args.repeats, gold)  # a fresh window per symbol for each run: new signals
        for run in range(args.repeats):
            drains.append(asyncio.run(throughput(url, load, 1, args.symbols)))
            acks.append(asyncio.run(ack_floor(url, load)))
            windows = scan_sets[run * args.symbols:(run + 1) * args.symbols]
            floors.append(asyncio.run(scan(url, pg, windows, args.symbols, decide=False)))
            scans.append(asyncio.run(scan(url, pg, windows, args.symbols, decide=True)))
            decided = asyncio.run(decision_counts(pg))
    finally:
        kit.delete_vhost(vhost)
        kit.drop_database(pg)

    bots = args.symbols * args.bots_per_symbol
    cores = os.cpu_count()
    cpu_us = statistics.median(d.worker_cpu_ms * 1000 for d in drains)
    print(f"\nOne strategy worker ({len(load)} windows of {args.bots_per_symbol} bots each, pre-queued; {cores} cores), "
          f"medians of {args.repeats}")
    print(f"{'':<58}{'CPU per window':>16}")
    print(f"{'worker process (RabbitMQ consumer, decode, scan, publish)':<58}{cpu_us:>13.0f} us   (target 80 us; runs: "
          f"{', '.join(f'{d.worker_cpu_ms * 1000:.0f}' for d in drains)})")
    ack_us = statistics.median(acks)
    print(f"{'  in this process: decode + scan_window + encode':<58}{parts.whole:>13.0f} us")
    print(f"{'floor (a): aio-pika consumer that only receives and acks':<58}{ack_us:>13.0f} us   (runs: "
          f"{', '.join(f'{a:.0f}' for a in acks)}; a body of {len(load[0].encode()):,} bytes)")
    print(f"{'floor (b): decode the body (JSON + validation)':<58}{parts.decode:>13.0f} us   "
          f"({parts.decode_bars:.0f} us with its columns as arrays)")
    print(f"{'floor (c): the four strategies on one decoded window':<58}{parts.strategies:>13.0f} us")
    bound = ack_us + parts.decode_bars + parts.strategies
    print(f"{'floors (a) + (b) + (c)':<58}{bound:>13.0f} us   (worker / floors {cpu_us / bound:.2f})")
    if ack_us > 80:
        print(f"worker CPU per window: target 80 us is out of reach on aio-pika: receiving and acking a message of this "
              f"size alone costs {ack_us:.0f} us ({ack_us / 80:.1f}x the target), before any decode ({parts.decode:.0f} us) "
              f"or strategy ({parts.strategies:.0f} us)")
    print(f"worker CPU per window: ours {cpu_us:.0f} us, floor (a)+(b)+(c) {bound:.0f} us, target 80 us")
    print(f"{'windows/s of the one worker':<58}{statistics.median(d.windows_per_s for d in drains):>13.1f}")
    ours, floor = statistics.median(r.elapsed_s for r in scans), statistics.median(r.elapsed_s for r in floors)
    ours_cpu = statistics.median(r.cpu_s for r in scans)
    workers_cpu = statistics.median(r.workers_cpu_s for r in scans)
    signals = sum(decided.values())
    print(f"\nOne scan: {bots} bots over {args.symbols} symbols, 2 workers, decision on PostgreSQL, medians of {args.repeats}")
    print(f"{'decided (publish -> every window decided)':<58}{ours:>10.2f} s   (target 1.2 s; runs: "
          f"{', '.join(f'{r.elapsed_s:.2f}' for r in scans)})")
    floor_cpu = statistics.median(r.cpu_s for r in floors)
    own = max(0.0, ours_cpu - floor_cpu)  # what deciding adds to this process (publishing and taking are in both)
    print(f"{'  this process CPU meanwhile (windows published, decision)':<58}{ours_cpu:>10.2f} s   "
          f"(the floor's: {floor_cpu:.2f} s; deciding adds {own:.2f} s, {own * 1000 / max(signals, 1):.2f} ms a signal; "
          f"{signals} signals decided: {decided})")
    print(f"{'  the two workers CPU meanwhile':<58}{workers_cpu:>10.2f} s")
    print(f"{'floor (publish -> every ScanResult taken, no decision)':<58}{floor:>10.2f} s   (runs: "
          f"{', '.join(f'{r.elapsed_s:.2f}' for r in floors)})")
    # The CPU the decided scan needs, the broker's and PostgreSQL's left out, spread over every core at best.
    bound = (ours_cpu + workers_cpu) / (cores or 1)
    print(f"{'lower bound: (this process + workers CPU) / cores':<58}{bound:>10.2f} s   (RabbitMQ, PostgreSQL not counted)")
    if floor > 1.2 or bound > 1.2:
        print(f"scan decided: target 1.2 s is out of reach on this machine: the same scan with nobody deciding takes "
              f"{floor:.2f} s, and this process's and the workers' CPU alone fill {cores} cores for {bound:.2f} s")
    print(f"scan decided: ours {ours:.2f} s, floor {floor:.2f} s, ratio {ours / floor:.2f}, target 1.2 s")


if __name__ == "__main__":
    main()
