"""The trader's dashboard at `/`: login with a name and API key, an overview updated live over server-sent events,
a page per bot, the signals and decisions with their checks, and a chart per symbol (services/decision/dashboard/
routes.py). `mount_dashboard` is what every composition root calls."""

from services.decision.dashboard.routes import mount_dashboard

__all__ = ["mount_dashboard"]
