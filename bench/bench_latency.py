"""Latency benchmark: a BarWindow's publish to its order's broker call, p50 and p99, distributed and embedded.

Distributed: decision, executor and strategy as `scalper serve` processes on RabbitMQ (a vhost of the run) and
PostgreSQL (a database of the run). Embedded: the same services in this process on the in-memory bus and SQLite.

Each sample is one real gold-file window whose strategies match, shifted to the present and published for one
fresh bot; the latency runs from the publish to the executor recording the order as `sending`, the step just before
it calls the broker (the executor's clock is the wall clock here: SCALPER_CLOCK_START = SCALPER_CLOCK_ANCHOR, speed 1).
Each bot has its own paper account (a user has one bot per account and symbol, and a bot trades a bar once), so no
risk limit refuses it. Once a sample's order is filled, the bench closes its position with an executor `close_all`
command, as a user would: the next window finds no position that its prices would close. Also: in aligned mode, bar close to BarWindow publish
(the 1 s scan delay plus the scan's own time), and each service process's memory (RSS).

    .venv/bin/python bench/bench_latency.py [--samples 100] [--embedded-samples 400] [--skip-embedded] [--skip-distributed]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sqlalchemy import select  # noqa: E402

import fourhop  # noqa: E402  (bench/fourhop.py: the four-hop floors)

from services.decision.bots import ensure_demo, setup_bot  # noqa: E402
from services.decision.plan import build_plan  # noqa: E402
from services.market_data.feeds.replay import ReplayFeed  # noqa: E402
from services.strategy.service import scan_window  # noqa: E402
from shared.bus import topology  # noqa: E402
from shared.db.engine import create_engine, session_factory, transaction, upgrade  # noqa: E402
from shared.heap import startup_frozen  # noqa: E402
from shared.db.models import Bot, BrokerAccount, Decision, Order, SignalRow, User  # noqa: E402
from shared.messages import BarColumns, BarWindow, ExecutorCommand  # noqa: E402
from shared.settings import Settings  # noqa: E402
from shared.strategies.catalog import CATALOG, lookback_for  # noqa: E402

BOT_SYMBOL = "XAUUSDm"
MAX_SAMPLES = 100
MIN_SCORE = Bot.model_fields["decision_min_score"].default


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def prepare_database(url: str, bots: int):
    """Migrate, create the demo user and `bots` paper accounts with one XAUUSD bot each; the plan's XAUUSD entry."""
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    sessions = session_factory(engine)
    async with transaction(sessions) as session:
        await ensure_demo(session=session)
        demo = (await session.execute(select(User).where(User.name == "demo"))).scalar_one()
        for i in range(bots):
            account = BrokerAccount(user_id=demo.id, name=f"bench-{i}", broker="paper", server_time="utc", is_demo=True, is_active=True)
            session.add(account)
            await session.flush()
            await setup_bot(session=session, user_id=demo.id, account_id=account.id, symbol=BOT_SYMBOL, auto_trade=True, strategies=None)
    async with sessions() as session:
        plan = await build_plan(session=session, lookback_for=lookback_for, min_lookback=100)
    entry = next(p for p in plan.symbols if p.symbol == "XAUUSD")
    return engine, sessions, entry


def matching_windows(gold: Path, entry, count: int) -> list[BarWindow]:
    """Gold windows whose strategies match for the first subscription with a score the bot's default minimum passes
    (a signal that risk lets through, so an order for a fresh bot).

    Each window's prices are moved (by a whole number of cents) so that its newest close is the first window's: the
    windows come from weeks of the file, and with the real prices a position left open by one sample was closed at
    the next window's price, hundreds of dollars away, which tripped the bot's kill switch at every other sample.
    A moved window is kept only if it still matches."""
    feed = ReplayFeed(gold, "XAUUSD")
    at = feed.start_time()
    sub = entry.subscriptions[0]
    out: list[BarWindow] = []
    anchor: float | None = None
    while len(out) < count and at <= feed.ends_at():
        bars = BarColumns.from_bars(feed.closed_bars("XAUUSD", until=at, count=entry.lookback))
        if anchor is not None:
            bars = moved(bars, round(anchor - bars.close[-1], 2))
        window = BarWindow(symbol="XAUUSD", bars=bars, closed_through=at, source="bench", subscriptions=(sub,))
        signals, _ = scan_window(window, catalog=CATALOG, now=at)
        if any(s.score >= MIN_SCORE for s in signals):
            out.append(window)
            anchor = bars.close[-1] if anchor is None else anchor
        at += timedelta(minutes=1)
    return out


def moved(bars: BarColumns, by: float) -> BarColumns:
    """The bars with every price moved by `by`, rounded to gold's two digits."""
    return bars.model_copy(update={k: [round(p + by, 2) for p in getattr(bars, k)] for k in ("open", "high", "low", "close")})


def shifted(window: BarWindow, sub, closed_through: datetime) -> BarWindow:
    """The window moved in time so its newest bar closes at `closed_through`, for one subscription, as a new message."""
    shift = int((closed_through - window.closed_through).total_seconds())
    bars = window.bars.model_copy(update={"time": [t + shift for t in window.bars.time]})
    return BarWindow(symbol=window.symbol, bars=bars, closed_through=closed_through, source="bench", subscriptions=(sub,))


async def release(bus, sessions, sub, *, timeout_s: float = 10.0) -> None:
    """Once the sample's order is settled, close its position (executor `close_all` for the bot) and wait until
    decision has applied the close: the account takes its next bot's order again."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        async with sessions() as session:
            decision = (await session.execute(select(Decision).where(Decision.bot_id == sub.bot_id, Decision.action == "open"))).scalars().first()
        if decision is not None and decision.order_status not in (None, "sent"):
            break
        await asyncio.sleep(0.005)
    else:
        raise TimeoutError(f"bot {sub.bot_id}: its order was not settled within {timeout_s} s")
    if decision.order_status != "filled":
        return
    command = ExecutorCommand(command="close_all", account_id=sub.account_id, bot_id=sub.bot_id, reason="manual")
    await bus.publish(command, exchange=topology.EXECUTION_COMMANDS, routing_key=str(sub.account_id))
    while time.monotonic() < deadline:
        async with sessions() as session:
            status = (await session.execute(select(Decision.position_status).where(Decision.id == decision.id))).scalar_one()
        if status == "closed":
            return
        await asyncio.sleep(0.005)
    raise TimeoutError(f"bot {sub.bot_id}: its position was not closed within {timeout_s} s")


async def measure(
    bus, sessions, entry, windows: list[BarWindow], *, timeout_s: float = 5.0, brokers: dict | None = None, settle_s: float = 0.0
) -> tuple[list[float], int]:
    """Publish each window for its own bot; the wall time until that bot's order reaches the broker (in-process
    brokers: the call itself) or is recorded as `sending` (separate processes: read from the orders table).

    With `settle_s` (an idle engine), each sample's position is then closed (`release`) and the next window waits
    `settle_s` more; back to back, positions stay open until a later window's prices close them."""
    latencies: list[float] = []
    missed = 0
    for window, sub in zip(windows, entry.subscriptions, strict=False):
        await asyncio.sleep(settle_s)
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        message = shifted(window, sub, now)
        t0 = time.time()
        await bus.publish(message, exchange=topology.MARKET_BARS, routing_key=topology.bars_key("1m", "XAUUSD"))
        broker_ms = None
        if brokers is not None:
            broker = brokers[sub.account_id]
            try:
                await asyncio.wait_for(broker.called.wait(), timeout_s)
                broker_ms = (broker.called_at - t0) * 1000
            except TimeoutError:
                missed += 1
                continue
        deadline = time.monotonic() + timeout_s
        order = None
        while time.monotonic() < deadline:
            async with sessions() as session:
                order = (await session.execute(select(Order).where(Order.bot_id == sub.bot_id))).scalars().first()
            if order is not None:
                break
            await asyncio.sleep(0.002 if brokers is None else 0.02)
        if order is None:
            missed += 1
            continue
        latencies.append(broker_ms if broker_ms is not None else (order.created_at.timestamp() - t0) * 1000)
        async with sessions() as session:
            signal = (await session.execute(select(SignalRow).where(SignalRow.bot_id == sub.bot_id))).scalars().first()
            decision = (await session.execute(select(Decision).where(Decision.bot_id == sub.bot_id))).scalars().first()
        if signal is not None and decision is not None:
            STAGES.append(((signal.created_at.timestamp() - t0) * 1000, (order.created_at - signal.created_at).total_seconds() * 1000))
        if settle_s:
            await release(bus, sessions, sub)
    return latencies, missed


# An idle engine: the previous order's follow-ups (its fill recorded, reported and applied by decision, then its
# position closed) are done.
IDLE_SETTLE_S = 0.25


async def paced(measure_fn, bus, sessions, entry, windows: list[BarWindow], **kw) -> dict:
    """Three warm-up samples, then half the windows each way, every one for a fresh bot: back to back (each window published
    as soon as the previous order reached the broker, while its follow-ups still run) and on an idle engine (as live
    windows come, a minute apart per symbol)."""
    subs = entry.subscriptions
    n = (len(windows) - 3) // 2

    def bots(first: int, count: int):
        return entry.model_copy(update={"subscriptions": subs[first:first + count]})

    await measure_fn(bus, sessions, bots(0, 3), windows[:3], **kw)
    busy, busy_missed = await measure_fn(bus, sessions, bots(3, n), windows[3:3 + n], **kw)
    busy_stages = list(STAGES)
    STAGES.clear()
    # The idle engine starts flat: back to back left up to one position per sample open, and the next window would
    # otherwise check (and close) them all inside the first idle sample.
    for sub in bots(0, 3 + n).subscriptions:
        try:
            await release(bus, sessions, sub, timeout_s=2.0)
        except TimeoutError as exc:  # a missed sample: it has no order to settle
            print(f"before the idle samples: {exc}")
    await asyncio.sleep(IDLE_SETTLE_S)
    idle, idle_missed = await measure_fn(bus, sessions, bots(3 + n, n), windows[3 + n:3 + 2 * n], settle_s=IDLE_SETTLE_S, **kw)
    return {"latencies": busy, "missed": busy_missed, "stages": busy_stages,
            "idle": idle, "idle_missed": idle_missed, "idle_stages": list(STAGES)}


STAGES: list[tuple[float, float]] = []  # (publish -> signal stored, signal stored -> order recorded) per sample


# --- distributed ---------------------------------------------------------------------------------------------


def distributed(gold: Path, samples: int) -> dict:
    from shared.bus.rabbitmq import RabbitBus
    from tests.distributed import cluster as kit

    vhost = kit.add_vhost()
    url = kit.create_database()
    workdir = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    cluster = None

    async def prepare():
        engine, _, entry = await prepare_database(url, samples)
        await engine.dispose()
        return entry

    async def run(entry) -> dict:
        engine = create_engine(url)
        sessions = session_factory(engine)
        bus = RabbitBus(kit.amqp_url(vhost))
        await bus.start()
        try:
            return await paced(measure, bus, sessions, entry, windows)
        finally:
            await bus.close()
            await engine.dispose()

    try:
        entry = asyncio.run(prepare())
        windows = matching_windows(gold, entry, samples)
        now = datetime.now(UTC)
        env = kit.base_env(
            bus_url=kit.amqp_url(vhost), database_url=url, feed=f"replay:{gold}", clock_start=now, speed=1.0,
            ORDER_TTL_S=60, SCAN_INTERVAL_S=3600, MONITOR_INTERVAL_S=3600, LOG_LEVEL="WARNING",
        )
        env["SCALPER_CLOCK_ANCHOR"] = env["SCALPER_CLOCK_START"]  # simulated time = wall time
        cluster = kit.Cluster(env=env, log_dir=workdir)
        cluster.start("decision")
        cluster.start("executor")
        cluster.start("strategy")
        result = asyncio.run(run(entry))
        result["rss"] = {p.name: rss_mb(p.popen.pid) for p in cluster.procs}
        # The floor, on the same broker and database server in the same run, as many samples each way.
        from sqlalchemy.engine import make_url

        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        result["chain"] = asyncio.run(fourhop.distributed_chain(kit.amqp_url(vhost), dsn, len(result["latencies"]) or 10))
        result["chain_idle"] = asyncio.run(fourhop.distributed_chain(kit.amqp_url(vhost), dsn, len(result["idle"]) or 10,
                                                                     settle_s=IDLE_SETTLE_S))
        return result
    finally:
        if cluster is not None:
            cluster.stop()
        kit.delete_vhost(vhost)
        kit.drop_database(url)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- embedded ------------------------------------------------------------------------------------------------


async def embedded(gold: Path, samples: int) -> dict:
    from scalper.serve import SharedClock
    from services.decision.service import DecisionService
    from services.executor.brokers.paper import PaperBroker
    from services.executor.service import ExecutorService
    from services.strategy.service import StrategyWorker
    from shared.bus import create_bus

    workdir = Path(tempfile.mkdtemp(prefix="bench-latency-embedded-"))
    url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    settings = Settings(
        database_url=url, bus_url="memory://", order_ttl_s=60, scan_interval_s=3600, monitor_interval_s=3600, log_level="WARNING"
    )
    engine, sessions, entry = await prepare_database(url, samples)
    windows = matching_windows(gold, entry, samples)
    now = datetime.now(UTC)
    clock = SharedClock(now, now, 1.0)
    bus = create_bus("memory://", delivery_limit=settings.delivery_limit, prefetch=settings.prefetch)
    await bus.start()
    async with sessions() as session:
        accounts = list((await session.execute(select(BrokerAccount).where(BrokerAccount.is_active))).scalars())
    class TimedPaperBroker(PaperBroker):
        """The paper broker, noting when it is first called to place an order."""

        def __init__(self, **kw) -> None:
            super().__init__(**kw)
            self.called = asyncio.Event()
            self.called_at = 0.0

        async def place(self, request):
            if not self.called.is_set():
                self.called_at = time.time()
                self.called.set()
            return await super().place(request)

    quotes: dict = {}  # one price book for every paper account, as the embedded stack wires them
    brokers = {a.id: TimedPaperBroker(clock=clock, balance=settings.paper_balance, quotes=quotes) for a in accounts}
    # The embedded stack's wiring (scalper/embedded.py), less market data: the bench publishes the windows.
    executor = ExecutorService(bus=bus, sessions=sessions, clock=clock, settings=settings, broker=brokers, account_ids=list(brokers))
    decision = DecisionService(bus=bus, sessions=sessions, clock=clock, settings=settings)
    strategy = StrategyWorker(bus=bus, settings=settings)
    for service in (executor, decision, strategy):
        await service.start()
    try:
        with startup_frozen():  # as the embedded app's lifespan does (shared/heap.py)
            result = await paced(measure, bus, sessions, entry, windows, brokers=brokers)
    finally:
        for service in (strategy, decision, executor):
            await service.stop()
        await bus.close()
        await engine.dispose()
    chain_db = str(workdir / "fourhop.db")
    result["chain"] = await fourhop.embedded_chain(chain_db, len(result["latencies"]) or 10)
    result["chain_idle"] = await fourhop.embedded_chain(chain_db, len(result["idle"]) or 10, settle_s=IDLE_SETTLE_S)
    return result


# --- aligned scan: bar close to BarWindow publish -------------------------------------------------------------


async def aligned_scan(symbol_counts=(1, 11)) -> list[tuple[int, float, float]]:
    """The scan's own time (wall) for n symbols on the synthetic feed; bar close to publish = 1 s delay + this."""
    from services.market_data.feeds.synthetic import SyntheticFeed
    from services.market_data.service import MarketDataService
    from shared.bus import create_bus
    from shared.messages import PlanSymbol, ScanPlan, StrategyConfig, Subscription
    from shared.symbols import DEFAULT_SPECS
    from shared.timeutil import ManualClock

    out = []
    for n in symbol_counts:
        names = list(DEFAULT_SPECS)[:n]
        feed = SyntheticFeed(symbols=[s for s in names if s in _synthetic_profiles()])
        names = feed.symbols()
        clock = ManualClock(datetime(2026, 3, 25, 12, 0, 1, tzinfo=UTC))
        bus = create_bus("memory://")
        await bus.start()
        await bus.declare_queue(topology.STRATEGY_BARS)
        service = MarketDataService(bus=bus, feed=feed, clock=clock, settings=Settings(scan_mode="aligned", bus_url="memory://"))
        sub = lambda s: Subscription(bot_id=1, account_id=1, symbol=s, strategies=(StrategyConfig(name="pinbar"),))  # noqa: E731
        service.set_plan(ScanPlan(symbols=tuple(PlanSymbol(symbol=s, lookback=400, subscriptions=(sub(s),)) for s in names)))
        times = []
        for _ in range(30):
            clock.advance(timedelta(minutes=1))
            t0 = time.perf_counter()
            await service.scan_once()
            times.append((time.perf_counter() - t0) * 1000)
        await bus.close()
        out.append((len(names), statistics.median(times), pct(times, 99)))
    return out


def _synthetic_profiles() -> set[str]:
    from services.market_data.feeds.synthetic import PROFILES

    return set(PROFILES)


def services_problem() -> str | None:
    from tests.distributed.cluster import services_problem as problem

    return problem()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=100, help="distributed samples (at most 100)")
    parser.add_argument("--embedded-samples", type=int, default=400,
                        help="embedded samples: about half at each pace, so a p99 is more than the slowest of a few dozen")
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument("--skip-distributed", action="store_true")
    args = parser.parse_args()
    if not 10 <= args.samples <= MAX_SAMPLES:
        # Each sample is a paper account, and an account two quorum queues: a broker at the usual 1024 open files
        # (this machine's: 927) stalls near 400 queues (docs/benchmarks.md).
        parser.error(f"--samples must be between 10 and {MAX_SAMPLES} (one account, so two RabbitMQ queues, each)")
    gold = Settings().data_dir / "XAUUSD_M1.csv"
    if not gold.is_file():
        print(f"skipped: {gold} is absent (set SCALPER_DATA_DIR)")
        return
    from shared.logging import configure_logging

    configure_logging("text", "WARNING")
    rows = []
    rss = {}
    problem = None if args.skip_distributed else services_problem()
    if problem:
        print(f"distributed part skipped: {problem}")
    if not args.skip_distributed and not problem:
        result = distributed(gold, args.samples)
        STAGES.clear()
        rows.append(("distributed (RabbitMQ + PostgreSQL, 3 processes)", result, 50.0))
        rss = result["rss"]
    if not args.skip_embedded:
        result = asyncio.run(embedded(gold, args.embedded_samples))
        STAGES.clear()
        rows.append(("embedded (in-memory bus + SQLite, 1 process)", result, 10.0))
    print("\nBarWindow publish -> the order's broker call (distributed: the order recorded `sending` just before it), one fresh bot per sample")
    print(f"{'mode':<52} {'pace':<12} {'n':>4} {'missed':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'target p99':>10}")
    for name, result, target in rows:
        for pace, lat, missed in (("back-to-back", result["latencies"], result["missed"]), ("idle engine", result["idle"], result["idle_missed"])):
            print(f"{name:<52} {pace:<12} {len(lat):>4} {missed:>6} {pct(lat, 50):>8.1f} {pct(lat, 99):>8.1f} "
                  f"{max(lat, default=float('nan')):>8.1f} {target:>9.0f}")
    print("\nWhere the time goes (p50): publish -> signal row stored (strategy + decision's signal insert); signal -> order `sending`")
    for name, result, _ in rows:
        for pace, key in (("back-to-back", "stages"), ("idle engine", "idle_stages")):
            a = [x for x, _ in result[key]]
            b = [y for _, y in result[key]]
            print(f"{name:<52} {pace:<12} {pct(a, 50):>8.1f} ms {pct(b, 50):>8.1f} ms")
    print("\nBeside the floor measured in the same run: four hops, each one commit and one hand-off (bench/fourhop.py)")
    print(f"{'mode':<52} {'pace':<12} {'p50 ms':>8} {'p99 ms':>8} {'floor p50':>10} {'floor p99':>10} {'p99 ratio':>10} {'target':>7}")
    for name, result, _ in rows:
        for pace, ours, floor in (("back-to-back", result["latencies"], result["chain"]), ("idle engine", result["idle"], result["chain_idle"])):
            ratio = pct(ours, 99) / pct(floor, 99)
            print(f"{name:<52} {pace:<12} {pct(ours, 50):>8.1f} {pct(ours, 99):>8.1f} {pct(floor, 50):>10.1f} {pct(floor, 99):>10.1f} "
                  f"{ratio:>9.2f}x {'1.5x':>7}")
    print("\nAligned mode: bar close -> BarWindow publish = 1000 ms scheduled delay (hh:mm:01) + the scan itself")
    print(f"{'symbols':>8} {'scan p50 ms':>12} {'scan p99 ms':>12} {'close->publish p50 ms':>22}")
    for n, p50, p99 in asyncio.run(aligned_scan()):
        print(f"{n:>8} {p50:>12.1f} {p99:>12.1f} {1000 + p50:>22.1f}")
    if rss:
        print("\nMemory (RSS) per service process after the run")
        for name, mb in rss.items():
            print(f"{name:<20} {mb:>8.1f} MB")


if __name__ == "__main__":
    main()
