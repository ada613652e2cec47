"""The `slotwise` command line.

It lives in the workbench package because the workbench is what drives everything else;
each command imports its subsystem lazily so `slotwise --help` stays instant and importing
this module starts nothing.
"""

from __future__ import annotations

import typer

from dashboards.cli import dashboards_app
from loadtests.cli import loadtest_app
from service.cli import infra_app, migrate_command, serve_command
from simulation.progress import emit
from simulation.workbench_cli import simulation_app

app = typer.Typer(
    name="slotwise",
    help="Slotwise: scheduling engine, booking service and workbench.",
    no_args_is_help=True,
    add_completion=False,
)
bench_app = typer.Typer(help="Benchmarks: each prints one JSON line with a same-run baseline.")
app.add_typer(bench_app, name="bench")
app.add_typer(infra_app, name="infra")
app.command("migrate")(migrate_command)
app.command("serve")(serve_command)
app.add_typer(simulation_app)  # simulate, dst, demo
app.add_typer(loadtest_app, name="loadtest", help="Locust load tests, verified in the database.")
app.add_typer(dashboards_app)  # dashboard


@bench_app.command("engine")
def bench_engine(
    json_output: bool = typer.Option(False, "--json", help="Print one JSON line only."),
    seed: int = typer.Option(1, help="Scenario seed."),
) -> None:
    """14-day availability (50 staff, 20 rooms, 3 zones, 2,000 bookings) vs brute force."""
    from simulation.bench_engine import run

    emit(run(seed=seed), json_output)


@bench_app.command("booking")
def bench_booking(
    json_output: bool = typer.Option(False, "--json", help="Print one JSON line only."),
    bookings: int = typer.Option(2000, min=10, help="Hold + confirm attempts."),
    concurrency: int = typer.Option(32, min=1, help="Concurrent clients."),
    workers: int = typer.Option(2, min=1, help="Server worker processes."),
    history: int = typer.Option(
        0, min=0, help="Past bookings per staff member, written before the run."
    ),
) -> None:
    """Hold + confirm over HTTP vs raw advisory-lock + insert transactions (same run)."""
    from simulation.bench_booking import run

    emit(
        run(bookings=bookings, concurrency=concurrency, workers=workers, history=history),
        json_output,
    )


@bench_app.command("assign")
def bench_assign(
    json_output: bool = typer.Option(False, "--json", help="Print one JSON line only."),
    seed: int = typer.Option(1, help="Workload seed."),
) -> None:
    """500 queued appointments over a salon week: CP-SAT assign vs greedy first fit."""
    from simulation.bench_assign import run

    emit(run(seed=seed), json_output)


@bench_app.command("dashboards")
def bench_dashboards(
    json_output: bool = typer.Option(False, "--json", help="Print one JSON line only."),
    events: int = typer.Option(10_000_000, min=1000, help="Attempt rows to generate."),
) -> None:
    """Every dashboard query over a generated 10,000,000-event dataset vs a full scan."""
    from simulation.bench_dashboards import run

    emit(run(events=events), json_output)
