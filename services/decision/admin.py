"""The admin pages at /admin (sqladmin): bots and accounts, and the trading records read-only (the seed's
Admin -> Execution -> Signals, Orders, Decisions and Core -> Audit Log). Only users created with `--admin` enter,
with their name and API key; the session cookie is signed with SCALPER_ADMIN_SECRET or a secret made per process."""

from __future__ import annotations

import os
import secrets

from fastapi import FastAPI
from sqladmin import Admin, ModelView
from sqladmin.authentication import AuthenticationBackend
from sqlalchemy import func, select
from sqlalchemy.orm import object_session
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import Request
from wtforms import FloatField
from wtforms.validators import NumberRange

from services.decision import audit
from services.decision.users import hash_api_key
from shared.db.models import ApiKey, AuditLog, Bot, BrokerAccount, Decision, SignalRow, User
from shared.logging import get_logger

log = get_logger(__name__)


class KeyLogin(AuthenticationBackend):
    """Log in with a user's name and one of their live API keys; the session remembers the key's id, so revoking
    the key ends the session at the next page."""

    def __init__(self, secret_key: str, sessions: async_sessionmaker[AsyncSession]) -> None:
        super().__init__(secret_key=secret_key, same_site="strict", https_only=False, max_age=8 * 3600)
        self._sessions = sessions

    async def _admin_key(self, *, name: str | None = None, key_hash: str | None = None, key_id: int | None = None):
        stmt = select(User, ApiKey).join(ApiKey, ApiKey.user_id == User.id).where(ApiKey.revoked_at.is_(None), User.is_admin.is_(True))
        if name is not None:
            stmt = stmt.where(User.name == name)
        if key_hash is not None:
            stmt = stmt.where(ApiKey.key_hash == key_hash)
        if key_id is not None:
            stmt = stmt.where(ApiKey.id == key_id)
        async with self._sessions() as session:
            return (await session.execute(stmt)).first()

    async def login(self, request: Request) -> bool:
        form = await request.form()
        name, key = str(form.get("username") or "").strip(), str(form.get("password") or "")
        if not name or not key:
            return False
        found = await self._admin_key(name=name, key_hash=hash_api_key(key))
        if found is None:
            log.info("admin login refused", user=name)  # the key itself is never logged
            return False
        user, api_key = found
        request.session.update({"admin_user_id": user.id, "admin_key_id": api_key.id})
        return True

    async def logout(self, request: Request) -> bool:
        request.session.clear()
        return True

    async def authenticate(self, request: Request) -> bool:
        key_id = request.session.get("admin_key_id")
        if not isinstance(key_id, int):
            return False
        found = await self._admin_key(key_id=key_id)
        return found is not None and found[0].id == request.session.get("admin_user_id")


class Audited(ModelView):
    """Changes made in the admin pages get an audit row, written in the same commit as the change."""

    audit_kind = "admin"

    async def on_model_change(self, data: dict, model, is_created: bool, request: Request) -> None:
        session = object_session(model)
        if session is None:
            return
        fields = [k for k in data if hasattr(model, k)]
        before = None if is_created else {k: getattr(model, k) for k in fields}
        after = {k: data[k] for k in fields}
        changed = [k for k in fields if is_created or before[k] != after[k]]
        audit.record(
            session=session,
            kind=self.audit_kind,
            entity_id=getattr(model, "id", None),
            user_id=getattr(model, "user_id", None) if not isinstance(model, User) else model.id,
            bot_id=model.id if isinstance(model, Bot) else None,
            actor=f"admin:{request.session.get('admin_user_id')}",
            message=f"{self.audit_kind} changed in the admin pages: {', '.join(changed) or 'nothing'}",
            before=None if before is None else {k: before[k] for k in changed},
            after={k: after[k] for k in changed},
        )


class ReadOnly(ModelView):
    can_create = False
    can_edit = False
    can_delete = False
    can_export = True
    page_size = 50


class UserAdmin(Audited, model=User):
    audit_kind = "user"
    category = "Core"
    column_list = [User.id, User.name, User.is_admin, User.created_at]
    can_create = False  # users get a key: `scalper user create`
    can_delete = False
    form_columns = [User.is_admin]


class AccountAdmin(Audited, model=BrokerAccount):
    audit_kind = "account"
    name, name_plural, category = "Account", "Accounts", "Core"
    column_list = [BrokerAccount.id, BrokerAccount.user_id, BrokerAccount.name, BrokerAccount.broker, BrokerAccount.login,
                   BrokerAccount.server, BrokerAccount.server_time, BrokerAccount.symbol_suffix, BrokerAccount.margin_mode, BrokerAccount.is_active]
    column_details_exclude_list = [BrokerAccount.password_ref]  # write-only: never shown
    # the password is set through the API only (never shown, not even as a form value); the owner is not changeable
    form_columns = [BrokerAccount.name, BrokerAccount.login, BrokerAccount.server, BrokerAccount.server_time, BrokerAccount.symbol_suffix,
                    BrokerAccount.margin_mode, BrokerAccount.is_active, BrokerAccount.leverage]
    form_overrides = {"leverage": FloatField}
    form_args = {"leverage": {"validators": [NumberRange(min=1, max=10_000)]}}
    can_delete = False


class BotAdmin(Audited, model=Bot):
    """Edits here skip the API's strategy checks, so only plain risk fields are editable; the plan loop picks them up."""

    audit_kind = "bot"
    category = "Core"
    column_list = [Bot.id, Bot.user_id, Bot.account_id, Bot.symbol, Bot.engine_mode, Bot.status, Bot.status_reason, Bot.auto_trade,
                   Bot.enabled_strategies, Bot.deleted_at]
    column_searchable_list = [Bot.symbol]
    can_create = False  # through the API or `scalper bot setup`, which validate against the strategy catalog
    can_delete = False
    form_columns = [Bot.name, Bot.auto_trade, Bot.decision_min_score, Bot.risk_max_concurrent_positions, Bot.risk_max_per_symbol,
                    Bot.max_trades_per_day, Bot.kill_switch_enabled, Bot.kill_switch_max_daily_loss_pct, Bot.default_qty]
    # sqladmin 0.32 has no converter for SQLAlchemy 2.1's Float (no longer a Numeric): name the form field
    form_overrides = {name: FloatField for name in ("decision_min_score", "kill_switch_max_daily_loss_pct", "default_qty")}
    form_args = {
        "decision_min_score": {"validators": [NumberRange(min=0, max=1)]},
        "kill_switch_max_daily_loss_pct": {"validators": [NumberRange(min=0.01, max=100)]},
        "default_qty": {"validators": [NumberRange(min=0.01, max=100)]},
        "risk_max_concurrent_positions": {"validators": [NumberRange(min=0)]},
        "risk_max_per_symbol": {"validators": [NumberRange(min=0)]},
        "max_trades_per_day": {"validators": [NumberRange(min=0)]},
    }


class SignalAdmin(ReadOnly, model=SignalRow):
    name, name_plural, category = "Signal", "Signals", "Execution"
    column_list = [SignalRow.created_at, SignalRow.signal_id, SignalRow.bot_id, SignalRow.symbol, SignalRow.strategy, SignalRow.side,
                   SignalRow.bar_time, SignalRow.entry, SignalRow.stop, SignalRow.target, SignalRow.score]
    column_default_sort = [(SignalRow.created_at, True)]
    column_searchable_list = [SignalRow.strategy, SignalRow.symbol]


class DecisionAdmin(ReadOnly, model=Decision):
    name, name_plural, category = "Decision", "Decisions", "Execution"
    column_list = [Decision.id, Decision.created_at, Decision.bot_id, Decision.symbol, Decision.action, Decision.reason, Decision.side,
                   Decision.volume, Decision.sl, Decision.tp, Decision.client_order_id]
    column_default_sort = [(Decision.id, True)]


class OrderAdmin(ReadOnly, model=Decision):
    """Orders as the decision service's read model keeps them (from the executor's reports)."""

    name, name_plural, category = "Order", "Orders", "Execution"
    column_list = [Decision.id, Decision.client_order_id, Decision.bot_id, Decision.symbol, Decision.side, Decision.volume,
                   Decision.order_status, Decision.ticket, Decision.fill_price, Decision.filled_at, Decision.expires_at]
    column_default_sort = [(Decision.id, True)]

    def list_query(self, request: Request):
        return select(Decision).where(Decision.client_order_id.is_not(None))

    def count_query(self, request: Request):
        return select(func.count(Decision.id)).where(Decision.client_order_id.is_not(None))


class PositionAdmin(ReadOnly, model=Decision):
    name, name_plural, category = "Position", "Positions", "Execution"
    column_list = [Decision.id, Decision.ticket, Decision.bot_id, Decision.symbol, Decision.side, Decision.volume, Decision.fill_price,
                   Decision.position_status, Decision.close_price, Decision.close_reason, Decision.closed_at, Decision.pnl]
    column_default_sort = [(Decision.id, True)]

    def list_query(self, request: Request):
        return select(Decision).where(Decision.position_status.is_not(None))

    def count_query(self, request: Request):
        return select(func.count(Decision.id)).where(Decision.position_status.is_not(None))


class AuditAdmin(ReadOnly, model=AuditLog):
    name, name_plural, category = "Audit Log", "Audit Log", "Core"
    column_list = [AuditLog.id, AuditLog.at, AuditLog.actor, AuditLog.user_id, AuditLog.bot_id, AuditLog.kind, AuditLog.entity_id, AuditLog.message]
    column_default_sort = [(AuditLog.id, True)]
    column_searchable_list = [AuditLog.message]


# sqladmin names a view's URL after its model; three views of the decisions table need names of their own.
OrderAdmin.identity = "order"
PositionAdmin.identity = "position"

VIEWS = (BotAdmin, AccountAdmin, UserAdmin, SignalAdmin, DecisionAdmin, OrderAdmin, PositionAdmin, AuditAdmin)


def mount_admin(app: FastAPI, *, engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], settings=None) -> Admin:
    secret = getattr(settings, "admin_secret", None) or os.environ.get("SCALPER_ADMIN_SECRET") or secrets.token_urlsafe(32)
    admin = Admin(
        app, engine=engine, session_maker=sessions, base_url="/admin", title="Scalper admin",
        authentication_backend=KeyLogin(secret, sessions),
    )
    for view in VIEWS:
        admin.add_view(view)
    return admin
