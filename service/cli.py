"""`slotwise infra up|down|status` and `slotwise migrate`.

Mounted by `simulation/cli.py`. Imports of the infrastructure modules happen inside the commands,
so `slotwise --help` stays instant and importing this module starts nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from service.infra import Endpoints
    from service.settings import Settings

infra_app = typer.Typer(
    name="infra",
    help="Embedded PostgreSQL and Valkey for development (data: <project>/var, SLOTWISE_DATA_DIR).",
    no_args_is_help=True,
    add_completion=False,
)


@infra_app.command("up")
def up_command() -> None:
    """Start the embedded servers not replaced by DATABASE_URL / REDIS_URL; reuse running ones."""
    from service.infra import endpoints_for

    settings = _settings()
    try:
        endpoints = endpoints_for(settings)
    except _expected_errors() as exc:
        _fail(exc)
    _print_endpoints(settings, endpoints)
    typer.echo("next: `slotwise migrate` to create or update the schema")


@infra_app.command("down")
def down_command() -> None:
    """Stop the embedded servers; their data stays in the data folder."""
    from service.infra import down

    settings = _settings()
    try:
        stopped = down(settings.data_dir)
    except _expected_errors() as exc:
        _fail(exc)
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@infra_app.command("status")
def status_command() -> None:
    """Show where the servers are and whether they run (passwords are never printed)."""
    from service.infra import status
    from service.settings import redact

    settings = _settings()
    state = status(settings.data_dir)
    typer.echo(f"data folder: {state.data_dir}")
    for server, external, variable in (
        (state.postgres, settings.database_url, "DATABASE_URL"),
        (state.valkey, settings.redis_url, "REDIS_URL"),
    ):
        if external is not None:
            typer.echo(f"{server.name}: external ({variable}) {redact(external)}")
        elif server.running:
            typer.echo(f"{server.name}: running, pid {server.pid}, 127.0.0.1:{server.port}")
        elif server.initialised:
            typer.echo(f"{server.name}: stopped (last port {server.port})")
        else:
            typer.echo(f"{server.name}: not set up (`slotwise infra up`)")
    if state.endpoints is not None:
        _print_endpoints(settings, state.endpoints)


def migrate_command() -> None:
    """Apply pending database migrations, starting the embedded servers if needed."""
    from service.infra import endpoints_for
    from service.migrate import applied_versions, migrate

    settings = _settings()
    try:
        endpoints = endpoints_for(settings)
        applied = migrate(endpoints.admin_url, app_url=endpoints.app_url)
        versions = applied_versions(endpoints.admin_url)
    except _expected_errors() as exc:
        _fail(exc)
    for migration in applied:
        typer.echo(f"applied {migration.label}")
    latest = f"{versions[-1]:04d}" if versions else "none"
    typer.echo(f"{'' if applied else 'nothing to apply; '}schema at version {latest}")


def _settings() -> Settings:
    from service.settings import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError as exc:
        _fail(exc)


def _print_endpoints(settings: Settings, endpoints: Endpoints) -> None:
    from service.settings import redact

    typer.echo(f"admin url: {redact(endpoints.admin_url)}")
    typer.echo(f"app url:   {redact(endpoints.app_url)}")
    typer.echo(f"redis url: {redact(endpoints.redis_url)}")
    if settings.database_url is None or settings.redis_url is None:
        typer.echo(f"passwords: 0600 files under {settings.data_dir}/{{postgres,valkey}}/")


def _expected_errors() -> tuple[type[Exception], ...]:
    """What a command reports as one line instead of a traceback.

    InfraError and MigrationError are RuntimeErrors; the drivers' own errors cover a server
    that is down or refuses us.
    """
    import psycopg
    import redis

    return (OSError, RuntimeError, psycopg.Error, redis.RedisError)


def _fail(exc: Exception) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(1)


def serve_command(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="TCP port."),
    workers: int = typer.Option(2, min=1, help="Worker processes."),
    backlog: int = typer.Option(4096, min=64, help="Listen backlog (bursts need thousands)."),
    booking_strategy: str = typer.Option(
        "holds",
        help="holds (the safe default), or pessimistic / constraint for the contention study.",
    ),
) -> None:
    """Run the booking API (embedded PostgreSQL and Valkey unless DATABASE_URL / REDIS_URL)."""
    from service.booking import strategy_from
    from service.infra import endpoints_for
    from service.migrate import migrate
    from service.server import check_connection_budget, load_secrets, serve, worker_env

    try:
        strategy_from(booking_strategy)
    except ValueError as exc:
        _fail(exc)
    settings = _settings()
    try:
        endpoints = endpoints_for(settings)
        migrate(endpoints.admin_url, app_url=endpoints.app_url)
        check_connection_budget(endpoints.admin_url, workers)
    except _expected_errors() as exc:
        _fail(exc)
    keys = load_secrets(settings.data_dir)
    typer.echo(f"Slotwise API on http://{host}:{port}  (OpenAPI: /openapi.json, docs: /docs)")
    typer.echo(f"admin key: {settings.data_dir / 'slotwise_admin_key'} (or SLOTWISE_ADMIN_KEY)")
    if booking_strategy != "holds":
        typer.echo(f"booking strategy: {booking_strategy} (a study setting, not for production)")
    env = worker_env(
        endpoints,
        keys,
        booking_strategy=booking_strategy,
        auth_cache_seconds=settings.auth_cache_seconds,
    )
    serve(host, port, workers, backlog, env)
