"""The `scalper` command line: run the embedded stack, set up bots and users, migrate the database."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from shared.settings import Settings

app = typer.Typer(help="Scalper signal engine: M1 price-action signals for MetaTrader 5.", no_args_is_help=True, add_completion=False)
bot_app = typer.Typer(help="Manage scalper bots.", no_args_is_help=True)
user_app = typer.Typer(help="Manage users and API keys.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
app.add_typer(bot_app, name="bot")
app.add_typer(user_app, name="user")
app.add_typer(db_app, name="db")
app.add_typer(__import__("scalper.commands.data", fromlist=["data_app"]).data_app, name="data")  # scalper data check
app.command("backtest")(__import__("scalper.commands.backtest", fromlist=["backtest"]).backtest)  # scalper backtest FILE
app.command("calibrate")(__import__("scalper.commands.calibrate", fromlist=["calibrate"]).calibrate)  # scalper calibrate FILE...
app.command("tune")(__import__("scalper.commands.tune", fromlist=["tune"]).tune)  # scalper tune FILE --strategy NAME
app.command("serve")(__import__("scalper.commands.serve", fromlist=["serve"]).serve)  # distributed mode: one service per process
app.add_typer(__import__("scalper.commands.sim", fromlist=["sim_app"]).sim_app, name="sim")  # scalper sim mt5: the simulator behind the mt5linux bridge


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


@app.command()
def run(
    feed: Annotated[str | None, typer.Option(help="synthetic | replay:PATH | mt5 (default: SCALPER_FEED)")] = None,
    speed: Annotated[float | None, typer.Option(help="clock speed of the synthetic or replay feed (default: SCALPER_SPEED)")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default: SCALPER_PORT, 8000)")] = None,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    symbol: Annotated[str | None, typer.Option(help="symbol of a replay file, when its name does not say")] = None,
    utc_offset: Annotated[float | None, typer.Option(help="hours the replay file's times are ahead of UTC (default: inferred)")] = None,
    server_time: Annotated[str | None, typer.Option("--server-time", help="the replay file's broker clock rule: utc, us_dst, +2 ...")] = None,
    tz: Annotated[str | None, typer.Option("--tz", help="IANA time zone of the replay file's times")] = None,
) -> None:
    """Run the whole stack in one process: in-memory bus, SQLite under var/, paper broker."""
    import uvicorn

    from scalper.embedded import EmbeddedStack, FeedError, create_app, make_feed
    from shared.logging import configure_logging

    overrides = {k: v for k, v in {"feed": feed, "speed": speed, "port": port}.items() if v is not None}
    settings = Settings(**overrides)
    configure_logging(settings.log_format, settings.log_level)
    try:
        # The mt5 feed needs the stack's bus and clock: the stack makes it itself.
        feed_in = None if settings.feed == "mt5" else make_feed(settings.feed, symbol=symbol, utc_offset=utc_offset, file_time=server_time, tz=tz)
        stack = EmbeddedStack(settings, feed=feed_in)
    except (FeedError, ValueError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"Scalper embedded stack on http://{host}:{settings.port}  (feed {settings.feed}, speed x{settings.speed:g}); Ctrl-C stops it.")
    uvicorn.run(create_app(stack), host=host, port=settings.port, log_config=None, log_level=settings.log_level.lower())


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Run the migrations on SCALPER_DATABASE_URL."""
    from shared.db.engine import upgrade

    settings = Settings()
    upgrade(settings.database_url)
    typer.echo("database at head")


async def _in_transaction(work):
    from shared.db.engine import create_engine, session_factory, transaction, upgrade

    settings = Settings()
    await asyncio.to_thread(upgrade, settings.database_url)
    engine = create_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    try:
        async with transaction(session_factory(engine)) as session:
            return await work(session)
    finally:
        await engine.dispose()


@user_app.command("create")
def user_create(
    name: str,
    admin: Annotated[bool, typer.Option("--admin", help="may log in to the admin pages")] = False,
) -> None:
    """Create a user and print its API key once (it is stored hashed and cannot be shown again)."""
    from services.decision.users import UserExists, create_user

    async def work(session):
        return await create_user(session=session, name=name, is_admin=admin)

    try:
        user, key = asyncio.run(_in_transaction(work))
    except UserExists as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps({"id": user.id, "name": user.name, "is_admin": user.is_admin}))
    typer.echo(f"API key (shown once, keep it safe): {key}")


@user_app.command("revoke-key")
def user_revoke_key(name: str) -> None:
    """Revoke every live API key of the user NAME (issue a new one with POST /api/v1/keys or ask an admin)."""
    from services.decision.users import revoke_keys, user_by_name

    async def work(session):
        user = await user_by_name(session=session, name=name)
        if user is None:
            return None
        return await revoke_keys(session=session, user_id=user.id, actor="cli")

    revoked = asyncio.run(_in_transaction(work))
    if revoked is None:
        raise _fail(f"no user named {name!r}")
    typer.echo(json.dumps({"user": name, "revoked_keys": revoked}))


@bot_app.command("setup")
def bot_setup(
    symbol: Annotated[str, typer.Option(help="the symbol as the broker names it, e.g. XAUUSDm")],
    user_id: Annotated[int, typer.Option(help="owner")] = 1,
    account_id: Annotated[int, typer.Option(help="broker account")] = 1,
    auto_trade: Annotated[
        bool | None, typer.Option("--auto-trade/--no-auto-trade", help="let the bot place orders (a new bot: off unless given; an existing one: unchanged unless given)")
    ] = None,
    strategies: Annotated[str | None, typer.Option(help="comma-separated; a new bot: every strategy of the engine unless given; an existing one: unchanged unless given")] = None,
    engine_mode: Annotated[str, typer.Option(help="scalper | harami")] = "scalper",
    params: Annotated[Path | None, typer.Option("--params", help="JSON with `strategy_params` ({strategy: {param: value}}), e.g. `scalper tune --out`")] = None,
    min_stop_spread_ratio: Annotated[float | None, typer.Option(help="refuse a stop closer than this many spreads (default 3)")] = None,
    min_expected_r: Annotated[float | None, typer.Option(help="refuse a calibrated signal expecting less R net of costs (default 0)")] = None,
) -> None:
    """Create or update a scalper bot (upsert on user, account, symbol, engine) and print it as JSON; an existing bot
    changes only in the options given."""
    from pydantic import ValidationError
    from sqlalchemy import select  # here, not at the top: `scalper backtest` imports no database module

    from services.decision.bots import BotSetupError, setup_bot
    from services.decision.schemas import BotUpdate
    from shared.db.models import BrokerAccount, User

    names = [s.strip() for s in strategies.split(",") if s.strip()] if strategies else None
    strategy_params = None
    if params is not None:
        try:
            doc = json.loads(params.read_text())
        except (OSError, ValueError) as exc:
            raise _fail(f"--params {params}: {exc}") from None
        strategy_params = doc.get("strategy_params") if isinstance(doc, dict) else None
        if not isinstance(strategy_params, dict):
            raise _fail(f"--params {params}: needs an object `strategy_params` of {{strategy: {{param: value}}}}")
    given = {"min_stop_spread_ratio": min_stop_spread_ratio, "min_expected_r": min_expected_r}
    try:  # the API's own validation of bot settings (PATCH /bots/{id})
        settings = BotUpdate.model_validate({k: v for k, v in given.items() if v is not None}).model_dump(exclude_none=True)
    except ValidationError as exc:
        raise _fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None

    async def work(session):
        if (await session.get(User, user_id)) is None:
            raise BotSetupError(f"user {user_id} does not exist: create one with `scalper user create NAME` (or start `scalper run` once for the demo user)")
        account = (await session.execute(select(BrokerAccount).where(BrokerAccount.id == account_id))).scalar_one_or_none()
        if account is None or account.user_id != user_id:
            raise BotSetupError(f"account {account_id} does not exist for user {user_id}")
        bot = await setup_bot(
            session=session, user_id=user_id, account_id=account_id, symbol=symbol, auto_trade=auto_trade, strategies=names, engine_mode=engine_mode,
            strategy_params=strategy_params, settings=settings,
        )
        return bot.model_dump(mode="json")

    try:
        bot = asyncio.run(_in_transaction(work))
    except BotSetupError as exc:
        raise _fail(str(exc)) from None
    typer.echo(json.dumps(bot, indent=2, default=str))


if __name__ == "__main__":  # pragma: no cover
    app()
