"""Rows of the workbench tables for a simulated tenant, and the run summary (Polars).

Both replays record each attempt as one tuple in the `Row` layout below and turn them into the
`attempts` table here, so the two modes write exactly the same columns the same way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import duckdb
import polars as pl

from engine.calendar import ResourceCalendar, day_span
from simulation.demand import HORIZON_DAYS, Period, TenantSpec
from simulation.events import frame

# One attempt: (at_us, ordinal, customer, service, action, requested_s, slot_start_s,
# slot_end_s, resource_ids, hold_id, booking_id, outcome, conflict_layer, reason, status,
# latency_ms). `ordinal` orders attempts of one tenant that share an instant.
Row = tuple[Any, ...]
_ROW_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "at_us": pl.Int64,
    "ordinal": pl.Int64,
    "customer": pl.Int64,
    "service": pl.Int64,
    "action": pl.String,
    "requested_s": pl.Int64,
    "slot_start_s": pl.Int64,
    "slot_end_s": pl.Int64,
    "resource_ids": pl.List(pl.String),
    "hold_id": pl.String,
    "booking_id": pl.String,
    "outcome": pl.String,
    "conflict_layer": pl.String,
    "reason": pl.String,
    "status": pl.Int64,
    "latency_ms": pl.Float64,
}


def _utc(column: str, scale: int) -> pl.Expr:
    return (pl.col(column) * scale).cast(pl.Datetime("us", "UTC"))


def attempts_frame(rows: Sequence[Row], spec: TenantSpec, strategy: str) -> pl.DataFrame:
    """One tenant's attempts, in the `attempts` layout plus a `tenant_index` column for
    ordering; `seq` and `run_id` are set when all tenants are merged (`merge_attempts`)."""
    raw = pl.DataFrame(list(rows), schema=_ROW_SCHEMA, orient="row")
    services = [s.key for s in spec.services]
    return raw.select(
        pl.lit(spec.index, pl.Int64).alias("tenant_index"),
        pl.col("ordinal"),
        pl.lit(spec.name).alias("tenant"),
        pl.format("{}-c{}", pl.lit(spec.name), pl.col("customer")).alias("customer"),
        pl.col("service").replace_strict(
            list(range(len(services))), services, return_dtype=pl.String
        ),
        pl.lit(strategy).alias("strategy"),
        pl.col("action"),
        _utc("at_us", 1).alias("at"),
        _utc("requested_s", 1_000_000).alias("requested_start"),
        _utc("slot_start_s", 1_000_000).alias("slot_start"),
        _utc("slot_end_s", 1_000_000).alias("slot_end"),
        pl.lit(spec.zone).alias("zone"),
        pl.col("resource_ids"),
        pl.col("hold_id"),
        pl.col("booking_id"),
        pl.col("outcome"),
        pl.col("conflict_layer"),
        pl.col("reason"),
        pl.col("status"),
        pl.col("latency_ms"),
    )


def merge_attempts(parts: Sequence[pl.DataFrame], run_id: str) -> pl.DataFrame:
    """All tenants' attempts in one order — by instant, then tenant, then the tenant's own
    order — numbered by `seq`. The order depends on the data only, never on which worker
    simulated which tenant."""
    merged = pl.concat(parts).sort(["at", "tenant_index", "ordinal"])
    return frame(
        "attempts",
        merged.drop("tenant_index", "ordinal").with_columns(
            pl.lit(run_id).alias("run_id"), pl.int_range(pl.len(), dtype=pl.Int64).alias("seq")
        ),
    )


def resources_frame(spec: TenantSpec, ids: Mapping[str, str], run_id: str) -> pl.DataFrame:
    """The tenant's resources; ``ids`` maps each spec key to the id used in the run."""
    return frame(
        "resources",
        [
            {
                "run_id": run_id,
                "tenant": spec.name,
                "resource_id": ids[r.key],
                "name": r.name,
                "kind": r.kind,
                "zone": spec.zone,
                "skills": list(r.skills),
                "daily_capacity": r.daily_capacity,
            }
            for r in spec.resources
        ],
    )


def bookable_span(spec: TenantSpec, period: Period) -> tuple[int, int]:
    """From the period's first local midnight to the last day a customer may book."""
    last = period.start + timedelta(days=period.days + HORIZON_DAYS)
    return day_span(period.start, spec.zone)[0], day_span(last, spec.zone)[1]


def working_frame(
    spec: TenantSpec,
    calendars: Mapping[str, ResourceCalendar],
    ids: Mapping[str, str],
    period: Period,
    run_id: str,
) -> pl.DataFrame:
    """Working time of every resource over everything bookable in the run (the arrival
    period plus the booking horizon), as UTC intervals; ``calendars`` keyed by run id."""
    span = bookable_span(spec, period)
    rows = [
        (ids[r.key], a, b)
        for r in spec.resources
        for a, b in calendars[ids[r.key]].working_spans(span)
    ]
    raw = pl.DataFrame(
        rows, schema={"resource_id": pl.String, "a": pl.Int64, "b": pl.Int64}, orient="row"
    )
    return frame(
        "working",
        raw.select(
            pl.lit(run_id).alias("run_id"),
            pl.lit(spec.name).alias("tenant"),
            pl.col("resource_id"),
            pl.lit(spec.zone).alias("zone"),
            _utc("a", 1_000_000).alias("start"),
            _utc("b", 1_000_000).alias("end"),
        ),
    )


OVERLAPS_SQL = """
SELECT count(*) FROM bookings a JOIN bookings b
  ON a.run_id = b.run_id AND a.tenant = b.tenant AND a.resource_id = b.resource_id
 AND a.booking_id < b.booking_id AND a.start < b."end" AND b.start < a."end"
 WHERE a.run_id = ? AND a.status = 'active' AND b.status = 'active'
"""


def double_bookings(database: str, run_id: str) -> int:
    """Overlapping active bookings of one resource in the run, counted by DuckDB."""
    with duckdb.connect(database, read_only=True) as con:
        row = con.execute(OVERLAPS_SQL, [run_id]).fetchone()
    return int(row[0]) if row else -1


def period_bounds(specs: Sequence[TenantSpec], period: Period) -> pl.DataFrame:
    """Each tenant's arrival period as UTC bounds (its own local midnights)."""
    last = period.start + timedelta(days=period.days - 1)
    return pl.DataFrame(
        [(s.name, day_span(period.start, s.zone)[0], day_span(last, s.zone)[1]) for s in specs],
        schema={"tenant": pl.String, "lo": pl.Int64, "hi": pl.Int64},
        orient="row",
    ).with_columns(_utc("lo", 1_000_000), _utc("hi", 1_000_000))


def summarize(
    attempts: pl.DataFrame, bookings: pl.DataFrame, working: pl.DataFrame, bounds: pl.DataFrame
) -> dict[str, Any]:
    """Headline figures of a run, computed with Polars from its tables; utilization is booked
    appointment time over working time, both within each tenant's own arrival period."""
    counts = attempts.group_by("action", "outcome").len().sort("action", "outcome")
    conflicts = attempts.filter(pl.col("outcome") == "conflict")
    layers = conflicts.group_by("conflict_layer").len().sort("conflict_layer")
    active = bookings.filter(pl.col("status") == "active")

    def minutes_within(df: pl.DataFrame) -> float:
        inside = df.join(bounds, on="tenant").select(
            (pl.min_horizontal("end", "hi") - pl.max_horizontal("start", "lo"))
            .dt.total_seconds()
            .clip(lower_bound=0)
            .sum()
        )
        return float(inside.item() or 0) / 60

    worked = minutes_within(working)
    return {
        "tenants": bounds.height,
        "attempts": attempts.height,
        "attempts_by_action_outcome": {f"{a}:{o}": n for a, o, n in counts.iter_rows()},
        "customers": attempts["customer"].n_unique(),
        "bookings_confirmed": attempts.filter(
            pl.col("action").is_in(["confirm", "reschedule"]) & (pl.col("outcome") == "ok")
        ).height,
        "bookings_active": active["booking_id"].n_unique(),
        "conflicts_prevented": conflicts.height,
        "conflicts_by_layer": {str(k): v for k, v in layers.iter_rows()},
        "utilization_in_period": round(minutes_within(active) / worked, 4) if worked else 0.0,
    }


def dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, default=str)
