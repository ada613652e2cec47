"""Workbench commands: demand simulation, DST sweep and the demo.

Commands here are merged into the `slotwise` command line (`simulation/cli.py`); each imports
its subsystem lazily so `slotwise --help` stays instant.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import typer

from simulation.progress import emit

simulation_app = typer.Typer()

CPUS = os.cpu_count() or 1
DATA_HELP = "Workbench data folder (default: <SLOTWISE_DATA_DIR or ./var>/workbench)."


def _data_dir(data: str | None) -> Path:
    from simulation.events import default_data_dir

    return Path(data) if data else default_data_dir()


@simulation_app.command("simulate")
def simulate_command(
    tenants: int = typer.Option(20, min=1, help="Tenants to draw."),
    days: int = typer.Option(7, min=1, max=366, help="Days of arrivals."),
    seed: int = typer.Option(1, help="The run's one seed."),
    mode: str = typer.Option("engine", help="engine (in-process, virtual time) or service (HTTP)."),
    start: str | None = typer.Option(None, help="First local day (ISO date); default 2027-03-01."),
    workers: int = typer.Option(CPUS, min=1, help="Engine mode: processes."),
    concurrency: int = typer.Option(32, min=1, help="Service mode: requests in flight."),
    data: str | None = typer.Option(None, help=DATA_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON line only."),
) -> None:
    """Replay seeded multi-tenant demand through the engine or the live service."""
    from simulation.progress import bar

    first = date.fromisoformat(start) if start else None
    if mode == "engine":
        from simulation.simulate import DEFAULT_START, run_engine

        with bar("replaying tenants", tenants, quiet=json_output) as advance:
            result = run_engine(
                seed,
                tenants,
                days,
                start=first or DEFAULT_START,
                data_dir=_data_dir(data),
                workers=workers,
                progress=advance,
            )
    elif mode == "service":
        from simulation.service_replay import run_service

        result = run_service(
            seed,
            tenants,
            days,
            start=first,
            data_dir=_data_dir(data),
            concurrency=concurrency,
            quiet=json_output,
        )
    else:
        raise typer.BadParameter("engine or service", param_hint="--mode")
    emit(result, json_output)


@simulation_app.command("dst")
def dst_command(
    first_year: int = typer.Option(2000, "--from", help="First year swept."),
    last_year: int = typer.Option(2037, "--to", help="Last year swept (inclusive)."),
    workers: int = typer.Option(CPUS, min=1, help="Processes."),
    data: str | None = typer.Option(None, help=DATA_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON line only."),
) -> None:
    """Recurring series around every DST transition of every IANA zone, checked."""
    from simulation import dst
    from simulation.progress import bar

    if last_year < first_year:
        raise typer.BadParameter("--to must not precede --from", param_hint="--to")
    with bar("sweeping zones", len(dst.zones()), quiet=json_output) as advance:
        result = dst.run(
            first_year, last_year, data_dir=_data_dir(data), workers=workers, progress=advance
        )
    emit(result, json_output)
    if result["violations"]:
        raise typer.Exit(1)


@simulation_app.command("demo")
def demo_command(
    tenants: int = typer.Option(6, min=1, help="Tenants (zones on several continents)."),
    days: int = typer.Option(7, min=1, max=31, help="Days of demand."),
    seed: int = typer.Option(1, help="The run's one seed."),
    concurrency: int = typer.Option(16, min=1, help="Requests in flight."),
    start: str | None = typer.Option(None, help="First local day (ISO date)."),
    data: str | None = typer.Option(None, help=DATA_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON line only."),
) -> None:
    """The main job: the service on the embedded servers, a week of demand, the summary."""
    from rich.console import Console

    from simulation import demo

    result = demo.run(
        seed=seed,
        tenants=tenants,
        days=days,
        data_dir=_data_dir(data),
        concurrency=concurrency,
        start=date.fromisoformat(start) if start else None,
        quiet=json_output,
    )
    if json_output:
        emit(result, json_output)
        return
    demo.report(result, Console())
    summary = result["summary"]
    if summary["double_bookings"] or summary["double_bookings_postgres"]:
        raise typer.Exit(1)
