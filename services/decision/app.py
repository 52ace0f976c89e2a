"""The decision service's public API under /api/v1: keys, accounts, bots, the kill switch, trading records, audit, stats.

Routes parse, call the functions beside them and answer; a change commits before the plan is republished, and an
executor command is written to the outbox in the change's transaction, then handed to the relay: a publish that fails
is the relay's to retry, never the route's 500. Another user's id answers 404, exactly like an id that does not exist.
Every time a route writes comes from the service's clock (`service.clock`), as the consumers' do.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy import select

from services.decision import accounts, bots, killswitch, outgoing, queries, users
from services.decision.deps import CurrentUser, Session
from services.decision.schemas import (
    AccountCreate,
    AccountPublic,
    AccountUpdate,
    AuditPublic,
    BotCreate,
    BotPublic,
    BotUpdate,
    DecisionPublic,
    KeyIssued,
    KeyPublic,
    KillAll,
    KillFailure,
    OrderPublic,
    Page,
    PositionPublic,
    Problem,
    SignalPublic,
    StatsPublic,
    UserPublic,
)
from shared.db.models import ApiKey, Bot, BrokerAccount
from shared.symbols import has_spec
from shared.messages import ExecutorCommand
from shared.secrets import SecretError

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "a body that is not JSON text"},
    401: {"model": Problem, "description": "no API key, or an unknown or revoked one"},
    404: {"model": Problem, "description": "no such thing of yours"},
}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": Problem, "description": "clashes with another bot or with open trades"}}

MAX_ID = 2_147_483_647  # the id columns are 32-bit integers
Limit = Annotated[int, Query(ge=1, le=queries.MAX_LIMIT, description="rows per page")]
Cursor = Annotated[str | None, Query(max_length=512, pattern=r"^[A-Za-z0-9_-]*$", description="next_cursor of the previous page")]
BotId = Annotated[int | None, Query(ge=1, le=MAX_ID, description="only this bot's rows")]
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
Symbol = Annotated[str | None, Query(max_length=32, description="the bot's symbol, e.g. XAUUSDm")]
Strategy = Annotated[str | None, Query(max_length=64)]
Since = Annotated[
    str | None,
    Query(max_length=64, description="ISO 8601 time, e.g. 2024-03-01T10:00:00Z; without a zone it is read as UTC",
          json_schema_extra={"format": "date-time"}),
]


def unprocessable(field: str, message: str, *, where: str = "body") -> HTTPException:
    """A 422 in FastAPI's own shape, naming the field and what to do about it."""
    loc = [where, *field.split(".")]
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=[{"loc": loc, "msg": message, "type": "value_error"}])


def not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} not found")


def _utc(value: str | datetime | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise unprocessable("since", "since: write an ISO 8601 time such as 2024-03-01T10:00:00Z", where="query") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _query_names(dependant) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def reject_unknown_query(request: Request) -> None:
    """Unknown or repeated query parameters are refused like unknown body fields (a misspelt filter must not return everything)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = _query_names(dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise unprocessable(unknown[0], f"unknown query parameter {unknown[0]!r}; this route takes: {allowed}", where="query")
    repeated = sorted(k for k in set(request.query_params) if len(request.query_params.getlist(k)) > 1)
    if repeated:  # every parameter here is a single value: a second one would be silently dropped
        raise unprocessable(repeated[0], f"give {repeated[0]} once", where="query")


async def reject_unexpected_body(request: Request) -> None:
    """A route that takes no body refuses one (`POST /kill` with `{bad` must not kill): nothing, `{}` or `null` only."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None or dependant.body_params:
        return
    raw = await request.body()
    if not raw.strip():
        return
    try:
        value = json.loads(raw)
    except ValueError:
        value = ...
    if value not in ({}, None):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[{"loc": ["body"], "msg": "this route takes no body: send none (or {})", "type": "value_error"}],
        )


def _without_secrets(errors) -> list[dict]:
    out = []
    for error in errors:
        if "password" in error.get("loc", ()):
            error = {k: v for k, v in error.items() if k not in ("input", "ctx")}
        out.append(error)
    return out


class SecretSafeRoute(APIRoute):
    """FastAPI's 422, except that a refused password is not echoed back in `input` (it is write-only, even when wrong).

    A route class rather than an exception handler: the embedded app and `scalper serve` mount these routes in their
    lifespan, after Starlette has built its exception middleware, so a handler added then would never run."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def route(request: Request):
            try:
                return await handler(request)
            except RequestValidationError as exc:
                raise RequestValidationError(_without_secrets(exc.errors()), body=None) from None

        return route


ServedSymbols = Callable[[], Awaitable[Collection[str] | None]]


class SymbolsUnavailable(RuntimeError):
    """The feed's symbols cannot be had now (market data unreachable): a bot's symbol cannot be checked (503)."""


def _actor(user) -> str:
    return f"user:{user.id}"


def _bot_public(bot: Bot) -> BotPublic:
    return BotPublic.model_validate(bot, from_attributes=True)


def create_router(service, *, served_symbols: ServedSymbols | None = None) -> APIRouter:
    """The /api/v1 routes of the decision service; `service` is the running DecisionService (plan, commands, clock).

    `served_symbols` answers the canonical symbols the feed serves (None from it, or no callable: any symbol with a
    spec, as with the mt5 feed); a bot's symbol must be one of them."""
    router = APIRouter(
        responses=ERRORS, dependencies=[Depends(reject_unknown_query), Depends(reject_unexpected_body)], route_class=SecretSafeRoute
    )

    def _now() -> datetime:
        return service.clock.now()

    async def _served() -> Collection[str] | None:
        if served_symbols is None:
            return None
        try:
            return await served_symbols()
        except SymbolsUnavailable as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"cannot check the symbol now: {exc}") from None

    async def _bot(session, user, bot_id: int) -> Bot:
        try:
            return await bots.get_bot(session=session, owner_id=user.id, bot_id=bot_id)
        except bots.BotNotFound:
            raise not_found(f"bot {bot_id}") from None

    async def _owned_bot_filter(session, user, bot_id: int | None) -> None:
        if bot_id is not None:
            bot = await session.get(Bot, bot_id)
            if bot is None or bot.user_id != user.id:
                raise not_found(f"bot {bot_id}")

    def _filters(bot_id, symbol, strategy, since) -> queries.Filters:
        return queries.Filters(bot_id=bot_id, symbol=symbol, strategy=strategy, since=_utc(since))

    # --- who am I, keys ---------------------------------------------------------------------------------

    @router.get("/me", response_model=UserPublic, tags=["users"])
    async def me(user: CurrentUser) -> Any:
        return UserPublic.model_validate(user, from_attributes=True)

    @router.get("/keys", response_model=Page[KeyPublic], tags=["users"])
    async def list_keys(user: CurrentUser, session: Session) -> Any:
        rows = list((await session.execute(select(ApiKey).where(ApiKey.user_id == user.id).order_by(ApiKey.id))).scalars())
        return Page(data=[KeyPublic.model_validate(r, from_attributes=True) for r in rows], count=len(rows))

    @router.post("/keys", response_model=KeyIssued, status_code=201, tags=["users"])
    async def issue_key(user: CurrentUser, session: Session) -> Any:
        row, key = await users.issue_api_key(session=session, user_id=user.id, now=_now())
        await session.commit()
        return KeyIssued(id=row.id, prefix=row.prefix, created_at=row.created_at, revoked_at=None, api_key=key)

    @router.delete("/keys/{key_id}", response_model=KeyPublic, tags=["users"])
    async def revoke_key(key_id: Id, user: CurrentUser, session: Session) -> Any:
        row = await users.revoke_key(session=session, user_id=user.id, key_id=key_id, actor=_actor(user), now=_now())
        if row is None:
            raise not_found(f"key {key_id}")
        await session.commit()
        return KeyPublic.model_validate(row, from_attributes=True)

    # --- accounts -----------------------------------------------------------------------------------------

    @router.get("/accounts", response_model=Page[AccountPublic], tags=["accounts"])
    async def list_accounts(user: CurrentUser, session: Session) -> Any:
        rows = await accounts.list_accounts(session=session, owner_id=user.id)
        return Page(data=[AccountPublic(**accounts.public(a)) for a in rows], count=len(rows))

    @router.post("/accounts", response_model=AccountPublic, status_code=201, tags=["accounts"])
    async def create_account(body: AccountCreate, user: CurrentUser, session: Session) -> Any:
        try:
            account = await accounts.create_account(session=session, owner_id=user.id, values=body.model_dump(), actor=_actor(user), now=_now())
        except SecretError as exc:  # a sealed value that does not open with this install's key; never echoed
            raise unprocessable("password", f"password: {exc}") from None
        await session.commit()
        return AccountPublic(**accounts.public(account))

    @router.get("/accounts/{account_id}", response_model=AccountPublic, tags=["accounts"])
    async def get_account(account_id: Id, user: CurrentUser, session: Session) -> Any:
        try:
            account = await accounts.get_account(session=session, owner_id=user.id, account_id=account_id)
        except accounts.AccountNotFound:
            raise not_found(f"account {account_id}") from None
        return AccountPublic(**accounts.public(account))

    @router.patch("/accounts/{account_id}", response_model=AccountPublic, tags=["accounts"])
    async def update_account(account_id: Id, body: AccountUpdate, user: CurrentUser, session: Session) -> Any:
        try:
            account = await accounts.get_account(session=session, owner_id=user.id, account_id=account_id)
        except accounts.AccountNotFound:
            raise not_found(f"account {account_id}") from None
        values = body.model_dump(exclude_unset=True)
        if account.broker == "mt5":
            for name in ("login", "server"):
                if name in values and not values[name]:
                    raise unprocessable(name, f"an mt5 account needs a {name}: give one, or leave the field out")
        try:
            changed = await accounts.update_account(session=session, account=account, values=values, actor=_actor(user), now=_now())
        except SecretError as exc:
            raise unprocessable("password", f"password: {exc}") from None
        await session.commit()
        if changed:
            await service.refresh_plan_quietly()  # is_active and the symbol suffix shape the plan
        return AccountPublic(**accounts.public(account))

    # --- bots ---------------------------------------------------------------------------------------------

    @router.get("/bots", response_model=Page[BotPublic], tags=["bots"])
    async def list_bots(user: CurrentUser, session: Session, limit: Limit = 100, cursor: Cursor = None) -> Any:
        stmt = select(Bot).where(Bot.user_id == user.id, Bot.deleted_at.is_(None))
        if cursor:
            try:
                (last,) = queries.decode_cursor(cursor, int)
            except queries.BadCursor as exc:
                raise unprocessable("cursor", str(exc), where="query") from None
            stmt = stmt.where(Bot.id > last)
        rows = list((await session.execute(stmt.order_by(Bot.id).limit(limit + 1))).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(
            data=[_bot_public(b) for b in rows], count=len(rows), next_cursor=queries.encode_cursor(rows[-1].id) if more and rows else None
        )

    async def _broker_describes(session, user, account_id: int | None, symbol: str | None) -> None:
        """A symbol no spec describes yet, on the user's mt5 account: its terminal describes it (its spec is learnt on
        the way) or says why not, and that reason is the 422."""
        if account_id is None or symbol is None:
            return
        account = await session.get(BrokerAccount, account_id)
        if account is None or account.user_id != user.id or account.broker != "mt5" or has_spec(symbol, account.symbol_suffix):
            return
        reason = await service.ask_broker_for_symbol(account_id=account.id, symbol=symbol)
        if reason is not None:
            raise unprocessable("symbol", f"the broker of account {account.id} cannot serve {symbol}: {reason}")

    @router.post("/bots", response_model=BotPublic, status_code=201, responses=CONFLICT, tags=["bots"])
    async def create_bot(body: BotCreate, user: CurrentUser, session: Session) -> Any:
        values = body.model_dump(exclude_unset=True)
        await _broker_describes(session, user, values.get("account_id"), values.get("symbol"))
        try:
            bot = await bots.create_bot(
                session=session, owner_id=user.id, values=values, actor=_actor(user), now=_now(),
                served=await _served(),
            )
        except bots.BotSetupError as exc:
            raise unprocessable(exc.field or "body", str(exc)) from None
        except bots.BotConflict as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        await session.commit()
        await service.refresh_plan_quietly()
        return _bot_public(bot)

    @router.get("/bots/{bot_id}", response_model=BotPublic, tags=["bots"])
    async def get_bot(bot_id: Id, user: CurrentUser, session: Session) -> Any:
        return _bot_public(await _bot(session, user, bot_id))

    @router.patch("/bots/{bot_id}", response_model=BotPublic, responses=CONFLICT, tags=["bots"])
    async def update_bot(bot_id: Id, body: BotUpdate, user: CurrentUser, session: Session) -> Any:
        bot = await _bot(session, user, bot_id)
        values = body.model_dump(exclude_unset=True)
        if values.get("symbol") not in (None, bot.symbol):
            await _broker_describes(session, user, bot.account_id, values["symbol"])
        try:
            served = await _served() if values.get("symbol") not in (None, bot.symbol) else None
            changed = await bots.update_bot(session=session, bot=bot, values=values, actor=_actor(user), now=_now(), served=served)
        except bots.BotSetupError as exc:
            raise unprocessable(exc.field or "body", str(exc)) from None
        except bots.BotConflict as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        await session.commit()
        if changed:
            await service.refresh_plan_quietly()
        return _bot_public(bot)

    @router.delete("/bots/{bot_id}", status_code=204, responses=CONFLICT, tags=["bots"])
    async def delete_bot(bot_id: Id, user: CurrentUser, session: Session) -> None:
        bot = await _bot(session, user, bot_id)
        try:
            await bots.delete_bot(session=session, bot=bot, actor=_actor(user), now=_now())
        except bots.BotConflict as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        await session.commit()
        await service.refresh_plan_quietly()

    @router.post("/bots/{bot_id}/pause", response_model=BotPublic, tags=["bots"])
    async def pause_bot(bot_id: Id, user: CurrentUser, session: Session) -> Any:
        bot = await _bot(session, user, bot_id)
        if bot.status == "killed":
            return _bot_public(bot)  # a killed bot stays killed until a person resumes it
        if bots.set_status(session=session, bot=bot, status="paused", reason=f"paused by {_actor(user)}", actor=_actor(user), now=_now()):
            await session.commit()
            await service.refresh_plan_quietly()
        return _bot_public(bot)

    @router.post("/bots/{bot_id}/resume", response_model=BotPublic, tags=["bots"])
    async def resume_bot(bot_id: Id, user: CurrentUser, session: Session) -> Any:
        bot = await _bot(session, user, bot_id)
        was_killed = bot.status == "killed"
        now = _now()
        if bots.set_status(session=session, bot=bot, status="active", reason="", actor=_actor(user), now=now):
            rows = []
            if was_killed:
                bot.kill_switch_reset_at = now
                # lift the executor's block on the bot's orders
                resume = ExecutorCommand(command="resume_bot", account_id=bot.account_id, bot_id=bot.id, reason="resume")
                rows = await outgoing.enqueue_commands(session=session, commands=[resume])
            await session.commit()
            await service.send_committed(rows)
            await service.refresh_plan_quietly()
        return _bot_public(bot)

    @router.post("/bots/{bot_id}/kill", response_model=BotPublic, tags=["bots"])
    async def kill_bot(bot_id: Id, user: CurrentUser, session: Session) -> Any:
        bot = await _bot(session, user, bot_id)
        command = killswitch.stop_bot(
            session=session, bot=bot, status="killed", reason=f"killed by {_actor(user)}", actor=_actor(user),
            now=service.clock.now(), command_reason="kill",
        )
        # sent even when it was killed already: flattening twice is harmless
        rows = await outgoing.enqueue_commands(session=session, commands=[command])
        await session.commit()
        await service.send_committed(rows)
        await service.refresh_plan_quietly()
        return _bot_public(bot)

    @router.post("/kill", response_model=KillAll, tags=["bots"])
    async def kill_all(user: CurrentUser, session: Session) -> Any:
        """Flatten and stop every bot of yours at once; a bot that cannot be killed is listed in `failed`, and the
        others are killed all the same."""
        rows = list((await session.execute(select(Bot).where(Bot.user_id == user.id, Bot.deleted_at.is_(None)).order_by(Bot.id))).scalars())
        outcome = await killswitch.kill_bots(
            session=session, bots=rows, reason=f"all bots killed by {_actor(user)}", actor=_actor(user), now=service.clock.now()
        )
        await session.commit()
        await service.send_committed(outcome.outbox)
        await service.refresh_plan_quietly()
        return KillAll(
            killed=outcome.killed,
            failed=[KillFailure(bot_id=bot_id, reason=reason) for bot_id, reason in outcome.failed],
            commands=len(outcome.outbox),
        )

    # --- trading records ----------------------------------------------------------------------------------

    @router.get("/signals", response_model=Page[SignalPublic], tags=["records"])
    async def list_signals(
        user: CurrentUser, session: Session, limit: Limit = 50, cursor: Cursor = None,
        bot_id: BotId = None, symbol: Symbol = None, strategy: Strategy = None, since: Since = None,
    ) -> Any:
        await _owned_bot_filter(session, user, bot_id)
        try:
            rows, next_cursor = await queries.list_signals(
                session=session, owner_id=user.id, filters=_filters(bot_id, symbol, strategy, since), limit=limit, cursor=cursor
            )
        except queries.BadCursor as exc:
            raise unprocessable("cursor", str(exc), where="query") from None
        return Page(data=[_signal_public(s, d) for s, d in rows], count=len(rows), next_cursor=next_cursor)

    @router.get("/signals/{signal_id}", response_model=SignalPublic, tags=["records"])
    async def get_signal(signal_id: Annotated[str, Path(max_length=64)], user: CurrentUser, session: Session) -> Any:
        row = await queries.get_signal(session=session, owner_id=user.id, signal_id=signal_id)
        if row is None:
            raise not_found(f"signal {signal_id}")
        return _signal_public(*row)

    def _decision_route(kind: str, model, convert):
        async def route(
            user: CurrentUser, session: Session, limit: Limit = 50, cursor: Cursor = None,
            bot_id: BotId = None, symbol: Symbol = None, strategy: Strategy = None, since: Since = None,
        ) -> Any:
            await _owned_bot_filter(session, user, bot_id)
            try:
                rows, next_cursor = await queries.list_decisions(
                    session=session, owner_id=user.id, filters=_filters(bot_id, symbol, strategy, since), limit=limit, cursor=cursor, kind=kind
                )
            except queries.BadCursor as exc:
                raise unprocessable("cursor", str(exc), where="query") from None
            return Page(data=[convert(d, s) for d, s in rows], count=len(rows), next_cursor=next_cursor)

        router.add_api_route(f"/{kind}", route, methods=["GET"], response_model=Page[model], tags=["records"], name=f"list_{kind}")

    _decision_route("decisions", DecisionPublic, _decision_public)
    _decision_route("orders", OrderPublic, _order_public)
    _decision_route("positions", PositionPublic, _position_public)

    @router.get("/audit", response_model=Page[AuditPublic], tags=["records"])
    async def list_audit(
        user: CurrentUser, session: Session, limit: Limit = 50, cursor: Cursor = None, bot_id: BotId = None, since: Since = None,
        kind: Annotated[str | None, Query(max_length=32, description="signal, decision, order, position, bot, account, key, user")] = None,
    ) -> Any:
        await _owned_bot_filter(session, user, bot_id)
        try:
            rows, next_cursor = await queries.list_audit(
                session=session, owner_id=user.id, filters=_filters(bot_id, None, None, since), limit=limit, cursor=cursor, kind=kind
            )
        except queries.BadCursor as exc:
            raise unprocessable("cursor", str(exc), where="query") from None
        return Page(data=[AuditPublic.model_validate(r, from_attributes=True) for r in rows], count=len(rows), next_cursor=next_cursor)

    @router.get("/stats", response_model=StatsPublic, tags=["records"])
    async def stats(user: CurrentUser, session: Session, bot_id: BotId = None, since: Since = None) -> Any:
        """Closed trades per bot and strategy: trades, wins, win rate, profit factor, expectancy (R), max drawdown, net P&L and pips."""
        from shared.stats import compute_stats

        await _owned_bot_filter(session, user, bot_id)
        trades = await queries.closed_trades(session=session, owner_id=user.id, bot_id=bot_id, since=_utc(since))
        return compute_stats(trades)

    return router


def _signal_public(signal, decision) -> SignalPublic:
    data = {name: getattr(signal, name) for name in SignalPublic.model_fields if hasattr(signal, name)}
    if decision is not None:
        data.update(decision_id=decision.id, action=decision.action, reason=decision.reason)
    return SignalPublic(**data)


def _decision_public(decision, strategy) -> DecisionPublic:
    data = {name: getattr(decision, name) for name in DecisionPublic.model_fields if name != "strategy"}
    return DecisionPublic(**data, strategy=strategy)


def _order_public(d, strategy) -> OrderPublic:
    return OrderPublic(
        decision_id=d.id, client_order_id=d.client_order_id, signal_id=d.signal_id, bot_id=d.bot_id, account_id=d.account_id,
        symbol=d.symbol, strategy=strategy, side=d.side, volume=d.volume, sl=d.sl, tp=d.tp, status=d.order_status, ticket=d.ticket,
        fill_price=d.fill_price, filled_at=d.filled_at, expires_at=d.expires_at, created_at=d.created_at,
    )


def _position_public(d, strategy) -> PositionPublic:
    return PositionPublic(
        decision_id=d.id, ticket=d.ticket, client_order_id=d.client_order_id, bot_id=d.bot_id, account_id=d.account_id,
        symbol=d.symbol, strategy=strategy, side=d.side, volume=d.volume, open_price=d.fill_price, sl=d.sl, tp=d.tp,
        opened_at=d.filled_at, status=d.position_status, close_price=d.close_price, close_reason=d.close_reason,
        closed_at=d.closed_at, pnl=d.pnl,
    )


def mount(app: FastAPI, service, *, prefix: str = "/api/v1", served_symbols: ServedSymbols | None = None) -> None:
    """Mount the public API on `app` (the embedded app, or the decision service's own)."""
    from services.decision import alerts_api, positions

    app.state.decision = service
    app.include_router(create_router(service, served_symbols=served_symbols), prefix=prefix)
    for extra in (positions.create_router(service), alerts_api.create_router(service)):
        app.include_router(extra, prefix=prefix, responses=ERRORS, dependencies=[Depends(reject_unknown_query), Depends(reject_unexpected_body)])

