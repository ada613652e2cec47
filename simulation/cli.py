"""The `slotwise` command line.

It lives in the workbench package because the workbench is what drives everything else;
each command imports its subsystem lazily so `slotwise --help` stays instant and importing
this module starts nothing.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="slotwise",
    help="Slotwise: scheduling engine, booking service and workbench.",
    no_args_is_help=True,
    add_completion=False,
)
bench_app = typer.Typer(help="Benchmarks: each prints one JSON line with a same-run baseline.")
app.add_typer(bench_app, name="bench")


@bench_app.command("engine")
def bench_engine(
    json_output: bool = typer.Option(False, "--json", help="Print one JSON line only."),
    seed: int = typer.Option(1, help="Scenario seed."),
) -> None:
    """14-day availability (50 staff, 20 rooms, 3 zones, 2,000 bookings) vs brute force."""
    import json

    from simulation.bench_engine import run

    result = run(seed=seed)
    if json_output:
        typer.echo(json.dumps(result))
        return
    for key, value in result.items():
        typer.echo(f"{key:>24}: {value}")
