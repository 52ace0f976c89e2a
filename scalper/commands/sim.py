"""`scalper sim mt5`: the MT5 simulator behind an RPyC classic server, so the unmodified mt5linux client (and the
executor with SCALPER_MT5_HOST) reaches it exactly as it would reach a terminal under Wine. A test double, not MT5."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

sim_app = typer.Typer(help="Simulators for testing without a broker.", no_args_is_help=True)

# Bars of history before the default start: one trading day of M1, more than any strategy's lookback here.
HISTORY_BARS = 1440


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


def _parse_start(text: str) -> datetime:
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@sim_app.command("mt5")
def mt5(
    data: Annotated[Path, typer.Option("--data", help="M1 file of the symbol (MT5 rates CSV `time,open,...` or MT5 export)")],
    port: Annotated[int, typer.Option(help="TCP port of the bridge (0: pick a free one; the ready line says which)")] = 18812,
    symbol: Annotated[str | None, typer.Option(help="canonical symbol of --data (default: the file name up to '_')")] = None,
    suffix: Annotated[str, typer.Option(help="the broker's symbol suffix, e.g. m for XAUUSDm")] = "",
    server_time: Annotated[str, typer.Option("--server-time", help="the broker's server clock: utc, us_dst or an hour offset like +2")] = "utc",
    data_time: Annotated[str | None, typer.Option("--data-time", help="clock of the file's times (default: --server-time, as an MT5 export is)")] = None,
    start: Annotated[str | None, typer.Option(help=f"simulated start, ISO (UTC unless it says otherwise), inside the data; default: {HISTORY_BARS} bars in")] = None,
    speed: Annotated[float, typer.Option(help="the terminal clock runs this many times real time (0: only the test hooks move it)")] = 1.0,
    host: Annotated[str, typer.Option(help="interface to listen on; the bridge runs any code it is sent, so keep it local")] = "127.0.0.1",
    margin_mode: Annotated[str, typer.Option("--margin-mode", help="hedging | netting")] = "hedging",
    trade_mode: Annotated[str, typer.Option("--trade-mode", help="demo | contest | real (the executor refuses real unless SCALPER_ALLOW_LIVE)")] = "demo",
    login: Annotated[int, typer.Option(help="the account's login")] = 5_000_001,
    password: Annotated[str | None, typer.Option(help="the account's password (default: any password is accepted)")] = None,
    balance: Annotated[float, typer.Option(help="starting balance")] = 10_000.0,
    leverage: Annotated[int, typer.Option(help="account leverage")] = 100,
) -> None:
    """Serve a simulated MT5 terminal over the mt5linux bridge's wire (RPyC classic) until SIGTERM or Ctrl-C."""
    try:
        import rpyc  # noqa: F401
    except ImportError:
        raise _fail("rpyc is not installed: pip install -e '.[mt5]' (or '.[test]')") from None
    from mt5sim.bridge import serve
    from mt5sim.market import load_m1
    from mt5sim.state import Terminal
    from shared.timeutil import server_offset

    if speed < 0:
        raise _fail(f"--speed must be 0 or more, not {speed:g}")
    if margin_mode not in ("hedging", "netting"):
        raise _fail(f"--margin-mode must be hedging or netting, not {margin_mode!r}")
    if trade_mode not in ("demo", "contest", "real"):
        raise _fail(f"--trade-mode must be demo, contest or real, not {trade_mode!r}")
    data_time = data_time or server_time
    for option, rule in (("--server-time", server_time), ("--data-time", data_time)):
        try:
            server_offset(rule, datetime.now(UTC))
        except ValueError as exc:
            raise _fail(f"{option}: {exc}") from None
    if not data.is_file():
        raise _fail(f"--data {data}: no such file")
    try:
        bars = load_m1(data, file_time=data_time)
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise _fail(f"--data {data}: not an M1 file this simulator reads ({type(exc).__name__}: {exc})") from None
    if len(bars) == 0:
        raise _fail(f"--data {data}: no bars")
    first, last = float(bars["time"][0]), float(bars["time"][-1])
    if start is None:
        at = float(bars["time"][min(HISTORY_BARS, len(bars) - 1)])
    else:
        try:
            at = _parse_start(start).timestamp()
        except ValueError:
            raise _fail(f"--start {start!r} is not an ISO time like 2026-04-01T10:00:00Z") from None
        if not first <= at <= last + 60:
            raise _fail(f"--start {_iso(at)} is outside the data: {data} runs from {_iso(first)} to {_iso(last + 60)} (UTC)")
    name = symbol or data.name.split("_")[0]
    try:
        terminal = Terminal({name: bars}, start=datetime.fromtimestamp(at, UTC), server_time=server_time, suffix=suffix,
                            login=login, password=password, balance=balance, leverage=leverage, trade_mode=trade_mode,
                            margin_mode=margin_mode)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if not _is_loopback(host):
        typer.secho(f"warning: listening on {host}: anyone who reaches this port can run code in this process", err=True,
                    fg=typer.colors.YELLOW)

    def ready(bound_host: str, bound_port: int) -> None:
        typer.echo(f"symbol {name}{suffix}, clock {_iso(at)} (server time {server_time}), speed x{speed:g}, data {data}")
        typer.echo(f"mt5 simulator ready on {bound_host}:{bound_port}")
        import sys

        sys.stdout.flush()

    try:
        serve(terminal, host=host, port=port, speed=speed, on_ready=ready)
    except OSError as exc:
        raise _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        pass
