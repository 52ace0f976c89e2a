"""Routes of the alerts: a user's notification URLs (`/api/v1/notifications`, write-only URLs: only the scheme and
label come back), a test send to one URL, and Alertmanager's webhook (`/api/v1/alerts/alertmanager`, with the service token)."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Request, status
from pydantic import BaseModel, Field
from sqlalchemy import select

from services.decision import alerts, audit
from services.decision.deps import CurrentUser, Session
from shared.db.models import NotificationUrl
from shared.http import SERVICE_TOKEN_HEADER
from shared.secrets import current_key, unseal

MAX_ID = 2_147_483_647


class NotificationCreate(BaseModel):
    # No length limits here: pydantic's 422 would echo the refused URL (and its token); the route checks it instead.
    url: str = Field(description="an apprise URL: tgram://token/chat, discord://id/token, slack://..., "
                     "mailto://user:pass@host, json://host/path ... (at most 2000 characters; write-only: never shown back)")
    label: str = Field(default="", max_length=100)


class NotificationPublic(BaseModel):
    id: int
    label: str
    scheme: str = Field(description="the URL's scheme; the URL itself is never shown")
    created_at: datetime


class NotificationList(BaseModel):
    data: list[NotificationPublic]
    count: int


class TestSent(BaseModel):
    sent: bool = Field(description="whether the URL took the test message")


class WebhookTaken(BaseModel):
    alerts: int = Field(description="alerts queued for the users' notification URLs")


def service_token_or_bearer(service):
    """The service token in X-Service-Token, or as `Authorization: Bearer` (Alertmanager's webhook sends only that);
    without a token configured every call is refused."""

    async def check(request: Request) -> None:
        token = service.settings.service_token
        expected = token.get_secret_value() if token is not None else ""
        given = request.headers.get(SERVICE_TOKEN_HEADER) or request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not expected or not secrets.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "send the service token (SCALPER_SERVICE_TOKEN) as a bearer credential")

    return check


def create_router(service) -> APIRouter:
    router = APIRouter(tags=["alerts"])

    def notifier():
        sink = getattr(service, "alerts", alerts.NO_ALERTS)
        if not isinstance(sink, alerts.Notifier):
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "this process sends no alerts")
        return sink

    @router.get("/notifications", response_model=NotificationList, summary="List your notification URLs")
    async def list_notifications(user: CurrentUser, session: Session) -> Any:
        """Where your alerts go (order filled, position closed, kill switch tripped, executor down, Algo Trading off)."""
        rows = list((await session.execute(select(NotificationUrl).where(NotificationUrl.user_id == user.id).order_by(NotificationUrl.id))).scalars())
        return NotificationList(data=[NotificationPublic.model_validate(r, from_attributes=True) for r in rows], count=len(rows))

    @router.post("/notifications", response_model=NotificationPublic, status_code=201, summary="Add a notification URL")
    async def add_notification(body: NotificationCreate, user: CurrentUser, session: Session) -> Any:
        """An apprise URL your alerts are sent to; it is sealed at rest and never shown back."""
        reason = "at most 2000 characters" if len(body.url) > 2000 else alerts.check_url(body.url.strip())
        if reason is not None:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=[{"loc": ["body", "url"], "msg": reason, "type": "value_error"}])
        row = await alerts.add_url(session=session, user_id=user.id, url=body.url.strip(), label=body.label, now=service.clock.now())
        audit.record(session=session, kind="user", entity_id=user.id, user_id=user.id, actor=f"user:{user.id}", at=service.clock.now(),
                     message=f"notification URL {row.id} ({row.scheme}://) added")
        await session.commit()
        return NotificationPublic.model_validate(row, from_attributes=True)

    @router.delete("/notifications/{url_id}", status_code=204, summary="Remove a notification URL")
    async def delete_notification(url_id: Annotated[int, Path(ge=1, le=MAX_ID)], user: CurrentUser, session: Session) -> None:
        """Alerts stop going there at once."""
        row = await session.get(NotificationUrl, url_id)
        if row is None or row.user_id != user.id:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"notification URL {url_id} not found")
        await session.delete(row)
        audit.record(session=session, kind="user", entity_id=user.id, user_id=user.id, actor=f"user:{user.id}", at=service.clock.now(),
                     message=f"notification URL {url_id} removed")
        await session.commit()

    @router.post("/notifications/{url_id}/test", response_model=TestSent, summary="Send a test alert to one URL")
    async def test_notification(url_id: Annotated[int, Path(ge=1, le=MAX_ID)], user: CurrentUser, session: Session) -> Any:
        """A test message to this notification URL now; says whether it took it."""
        row = await session.get(NotificationUrl, url_id)
        if row is None or row.user_id != user.id:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"notification URL {url_id} not found")
        url = unseal(row.url_sealed, current_key())
        ok = await notifier().send_to(url_id=row.id, scheme=row.scheme, url=url,
                                      alert=alerts.Alert(kind="test", user_id=user.id, title="Scalper test alert", body="Your notification URL works."))
        return TestSent(sent=ok)

    @router.post("/alerts/alertmanager", response_model=WebhookTaken, summary="Alertmanager's webhook",
                 dependencies=[Depends(service_token_or_bearer(service))])
    async def alertmanager(payload: Annotated[dict[str, Any], Body()]) -> Any:
        """Prometheus' alerts (executor down, Algo Trading off...) as Alertmanager posts them, fanned out to every
        user's notification URLs. Takes the service token (X-Service-Token), not a user's key."""
        sink = notifier()
        found = alerts.from_alertmanager(payload)
        for alert in found:
            sink.emit(alert)
        return WebhookTaken(alerts=len(found))

    return router


def attach(service, sessions) -> alerts.Notifier:
    """Give the decision service its alert sender (every composition root calls this); start it."""
    notifier = alerts.Notifier(sessions)
    service.alerts = notifier
    notifier.start()
    return notifier
