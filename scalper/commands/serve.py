"""`scalper serve <service>`: one service as its own process (distributed mode, architecture.md "Two ways to run")."""

from __future__ import annotations

from typing import Annotated

import typer


def serve(
    service: Annotated[str, typer.Argument(help="market_data | strategy | decision | executor")],
    port: Annotated[int | None, typer.Option(help="HTTP port (default: decision 8000, market_data 8001, strategy 8002, executor 8003)")] = None,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    account_id: Annotated[int | None, typer.Option(help="executor only: serve this account (default: every active account)")] = None,
) -> None:
    """Run one service as its own process, on SCALPER_BUS_URL (amqp://...) and SCALPER_DATABASE_URL (postgresql+asyncpg://...)."""
    import uvicorn

    from scalper.embedded import FeedError
    from scalper.serve import DEFAULT_PORTS, SERVICES, build_process, create_service_app
    from shared.logging import configure_logging
    from shared.settings import Settings

    name = service.replace("-", "_")
    if name not in SERVICES:
        typer.secho(f"error: unknown service {service!r}: use one of {', '.join(SERVICES)}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2)
    settings = Settings()
    if "log_format" not in settings.model_fields_set:  # distributed mode logs JSON unless SCALPER_LOG_FORMAT says otherwise
        settings = settings.model_copy(update={"log_format": "json"})
    configure_logging(settings.log_format, settings.log_level)
    try:
        process = build_process(name, settings, account_id=account_id)
    except (FeedError, ValueError) as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from None
    port = port if port is not None else DEFAULT_PORTS[name]
    typer.echo(f"Scalper {name} service on http://{host}:{port} (bus {settings.bus_url.split('@')[-1]}); Ctrl-C stops it.")
    uvicorn.run(create_service_app(process), host=host, port=port, log_config=None, log_level=settings.log_level.lower())
