"""`slotwise demo`: the main job, end to end on the embedded default.

Starts PostgreSQL and Valkey (embedded, under the data folder) and the booking service,
replays a week of seeded demand for several tenants through it over HTTP, writes the event
log to Parquet + DuckDB, and prints what happened: bookings, utilization, conflicts prevented
by each layer, and double bookings — counted by SQL in PostgreSQL and again in DuckDB, both 0.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from simulation.service_replay import Target, run_service


def run(
    *,
    seed: int,
    tenants: int,
    days: int,
    data_dir: Path,
    concurrency: int,
    start: date | None = None,
    target: Target | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """The demo run (``demo-s<seed>-t<tenants>-d<days>``); returns the service replay record."""
    return run_service(
        seed,
        tenants,
        days,
        data_dir=data_dir,
        start=start,
        concurrency=concurrency,
        target=target,
        kind="demo",
        quiet=quiet,
    )


def report(result: dict[str, Any], console: Console) -> None:
    """The summary a person reads after the demo."""
    s = result["summary"]
    by = s["attempts_by_action_outcome"]
    table = Table(title=f"Slotwise demo — run {result['run_id']}", show_header=False)
    table.add_column(justify="right", style="bold")
    table.add_column()
    table.add_row("tenants", str(s["tenants"]))
    table.add_row("customers", f"{s['customers']:,}")
    table.add_row(
        "attempts",
        f"{result['attempts']:,} over HTTP in {result['replay_s']} s "
        f"({s['requests_per_s']} req/s, "
        f"p50 {s['latency_p50_ms']} ms, p99 {s['latency_p99_ms']} ms)",
    )
    holds = sum(v for k, v in by.items() if k.startswith("hold:"))
    table.add_row(
        "holds",
        f"{by.get('hold:ok', 0):,} taken of {holds:,} asked; "
        f"{by.get('abandon:ok', 0):,} abandoned, {by.get('confirm:expired', 0):,} expired",
    )
    table.add_row(
        "bookings",
        f"{s['bookings_confirmed']:,} confirmed, {s['bookings_active']:,} active at the end "
        f"({by.get('cancel:ok', 0):,} cancelled, {by.get('reschedule:ok', 0):,} rescheduled)",
    )
    table.add_row("utilization", f"{s['utilization_in_period']:.1%} of working time in the week")
    layers = ", ".join(f"{k}: {v:,}" for k, v in s["conflicts_by_layer"].items()) or "none"
    table.add_row("conflicts prevented", f"{s['conflicts_prevented']:,} ({layers})")
    double = s["double_bookings_postgres"], s["double_bookings"]
    table.add_row(
        "double bookings",
        f"[{'green' if double == (0, 0) else 'red'}]{double[0]} in PostgreSQL, "
        f"{double[1]} in DuckDB[/] (overlapping active bookings of one resource, by SQL)",
    )
    table.add_row("data", result["database"])
    console.print(table)
    console.print(
        "Open the dashboards: [bold]uv run slotwise dashboard[/]  "
        "(utilization, conflicts, holds funnel, latency, DST)"
    )
