"""Load tests against the running booking service (Locust, verified in the database).

Commands here are merged into the `slotwise` command line (`simulation/cli.py`); each imports
its subsystem lazily so `slotwise --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from simulation.progress import emit

loadtest_app = typer.Typer()

DATA_HELP = "Workbench data folder (default: <SLOTWISE_DATA_DIR or ./var>/workbench)."


@loadtest_app.command("burst")
def burst_command(
    json_output: bool = typer.Option(False, "--json", help="Print one JSON line only."),
    attempts: int = typer.Option(10_000, min=1, help="Users, each one booking attempt."),
    hot_slots: int = typer.Option(20, min=1, help="Slots most users race for."),
    hot_share: float = typer.Option(0.9, min=0.0, max=1.0, help="Share of users on hot slots."),
    seed: int = typer.Option(1, help="Seed of the users' targets."),
    processes: int = typer.Option(2, min=1, help="Locust processes."),
    workers: int = typer.Option(2, min=1, help="Server workers (own server only)."),
    backlog: int = typer.Option(4096, min=64, help="Server listen backlog (own server only)."),
    warm_up: int = typer.Option(
        256, min=0, help="Bookings made first on a tenant of their own (0: the booking path cold)."
    ),
    url: str | None = typer.Option(None, help="Load this running service instead of starting one."),
    admin_key: str | None = typer.Option(
        None, envvar="SLOTWISE_ADMIN_KEY", help="Its admin key (with --url)."
    ),
    database_url: str | None = typer.Option(
        None, envvar="DATABASE_URL", help="Superuser URL of its database (with --url)."
    ),
    data: str | None = typer.Option(None, help=DATA_HELP),
) -> None:
    """10,000 hold + confirm attempts released at once; verified in SQL, vs a no-op burst."""
    from loadtests.run_burst import BurstParams, run

    params = BurstParams(
        attempts=attempts,
        hot_slots=hot_slots,
        hot_share=hot_share,
        seed=seed,
        processes=processes,
        workers=workers,
        backlog=backlog,
        warm_up=warm_up,
    )
    summary = run(
        params,
        url=url,
        admin_key=admin_key,
        database_url=database_url if url else None,
        redis_url=None,
        data_dir=Path(data) if data else None,
    )
    emit(summary, json_output)
    if broken(summary):
        raise typer.Exit(1)


def broken(summary: dict[str, Any]) -> bool:
    """Whether the verifier found an invariant broken (the figures are printed either way)."""
    return any(
        summary.get(key, 0) for key in ("double_bookings", "lost_acks", "hot_slot_violations")
    )


@loadtest_app.command("contention")
def contention_command(
    json_output: bool = typer.Option(False, "--json", help="One JSON line per strategy."),
    attempts: int = typer.Option(3000, min=1, help="Users per strategy, one attempt each."),
    hot_slots: int = typer.Option(10, min=1, help="Slots most users race for."),
    hot_share: float = typer.Option(0.9, min=0.0, max=1.0, help="Share of users on hot slots."),
    seed: int = typer.Option(1, help="Seed of the users' targets (the same for every strategy)."),
    processes: int = typer.Option(2, min=1, help="Locust processes."),
    workers: int = typer.Option(2, min=1, help="Server workers."),
    data: str | None = typer.Option(None, help=DATA_HELP),
) -> None:
    """The same hot-slot burst under holds, pessimistic locking and the constraint alone;
    contention read from PostgreSQL (see loadtests/run_contention.py for each figure)."""
    from loadtests.run_contention import ContentionParams, run

    params = ContentionParams(
        attempts=attempts,
        hot_slots=hot_slots,
        hot_share=hot_share,
        seed=seed,
        processes=processes,
        workers=workers,
    )
    lines = run(params, data_dir=Path(data) if data else None)
    for line in lines:
        emit(line, json_output)
    if any(broken(line) for line in lines):
        raise typer.Exit(1)


@loadtest_app.command("sustained")
def sustained_command(
    json_output: bool = typer.Option(False, "--json", help="Print one JSON line only."),
    duration: float = typer.Option(120.0, min=5.0, help="Seconds: one business day compressed."),
    base_users: int = typer.Option(10, min=1, help="Users at the day's mean intensity."),
    seed: int = typer.Option(1, help="Seed of the customers' choices."),
    processes: int = typer.Option(2, min=1, help="Locust processes."),
    workers: int = typer.Option(2, min=1, help="Server workers (own server only)."),
    url: str | None = typer.Option(None, help="Load this running service instead of starting one."),
    admin_key: str | None = typer.Option(
        None, envvar="SLOTWISE_ADMIN_KEY", help="Its admin key (with --url)."
    ),
    database_url: str | None = typer.Option(
        None, envvar="DATABASE_URL", help="Superuser URL of its database (with --url)."
    ),
    data: str | None = typer.Option(None, help=DATA_HELP),
) -> None:
    """Browse, hold, confirm, abandon and cancel over a compressed day with a flash crowd."""
    from loadtests.run_sustained import SustainedParams, run

    params = SustainedParams(
        duration_s=duration, base_users=base_users, seed=seed, processes=processes, workers=workers
    )
    result = run(
        params,
        url=url,
        admin_key=admin_key,
        database_url=database_url if url else None,
        data_dir=Path(data) if data else None,
    )
    emit(result, json_output)
    if broken(result):
        raise typer.Exit(1)
