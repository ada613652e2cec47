"""A seeded synthetic workbench dataset, vectorised, for the dashboard tests and benchmark.

It follows the `simulation/events.py` schema and keeps the tables consistent with each other,
so every dashboard figure has a known meaning: each `ok` confirm is a booking (one row per
booked resource), every hold has a fate (confirmed, abandoned, expired or refused at
confirmation) through its `hold_id`, bookings lie inside working time, no two active bookings
overlap on a resource, and a staff member never has more bookings in a local day than their
daily capacity. Conflicts fall on booked slots, skewed so that a few slots are hot.

The shape: tenants in zones on several continents (DST in both hemispheres, half-hour and
45-minute offsets, a zone without DST), staff and rooms working 09:00-17:00 local on weekdays
in one-hour cells, each booking inside one cell. Runs: an in-process simulation (`engine`), a
replay over HTTP (`holds`, with latency), a contention study (three strategies side by side,
with per-request rows and the `contention` table) and a DST sweep over the tenants' zones.
Everything is numpy/Polars column work: 10,000,000 attempts take seconds, not minutes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Final

import numpy as np
import polars as pl

from simulation.events import EventStore, frame

US: Final = 1_000_000
HOLD_TTL_S: Final = 600
CELL_HOURS: Final = tuple(range(9, 17))  # one-hour cells, 09:00-17:00 local

TENANTS: Final = (
    ("aurora-salon", "America/New_York"),
    ("kauri-clinic", "Pacific/Auckland"),
    ("thames-physio", "Europe/London"),
    ("saguaro-spa", "America/Phoenix"),
    ("harbour-dental", "Australia/Sydney"),
    ("lotus-wellness", "Asia/Kolkata"),
    ("lordhowe-dive", "Australia/Lord_Howe"),
    ("chatham-barber", "Pacific/Chatham"),
)
# Heavy-ish tail of tenant sizes (share of the staff).
_TENANT_WEIGHTS: Final = np.array([0.28, 0.2, 0.15, 0.11, 0.09, 0.07, 0.06, 0.04])

# service: (minutes, needs a room)
SERVICES: Final = {"cut": (30, False), "consult": (45, False), "colour": (60, True)}

# Session types: the steps each customer takes, as (action, outcome, conflict_layer, reason).
_OK = ("ok", None, None)
_STEPS: Final[dict[str, list[tuple[str, str | None, str | None, str | None]]]] = {
    "booked": [("availability", *_OK), ("hold", *_OK), ("confirm", *_OK)],
    "cancelled": [("availability", *_OK), ("hold", *_OK), ("confirm", *_OK), ("cancel", *_OK)],
    "abandoned": [("availability", *_OK), ("hold", *_OK), ("abandon", *_OK)],
    "lapsed": [("availability", *_OK), ("hold", *_OK)],
    "expired": [
        ("availability", *_OK),
        ("hold", *_OK),
        ("confirm", "expired", None, "hold_expired"),
    ],
    "hold_conflict": [("availability", *_OK), ("hold", "conflict", "hold", "held")],
    "lock_conflict": [
        ("availability", *_OK),
        ("hold", *_OK),
        ("confirm", "conflict", "lock", "conflict"),
    ],
    "constraint_conflict": [
        ("availability", *_OK),
        ("hold", *_OK),
        ("confirm", "conflict", "constraint", "conflict"),
    ],
    "capacity": [
        ("availability", *_OK),
        ("hold", *_OK),
        ("confirm", "capacity", None, "capacity_reached"),
    ],
    "no_slot": [("availability", "no_slot", None, "no_slot")],
    "error": [("availability", *_OK), ("hold", "error", None, "server_error")],
    # Strategies without holds: straight to the locked confirmation.
    "direct_booked": [("availability", *_OK), ("confirm", *_OK)],
    "direct_lock_conflict": [("availability", *_OK), ("confirm", "conflict", "lock", "conflict")],
    "direct_constraint_conflict": [
        ("availability", *_OK),
        ("confirm", "conflict", "constraint", "conflict"),
    ],
}
_TYPES: Final = list(_STEPS)
_BOOKING_TYPES: Final = {"booked", "cancelled", "direct_booked"}
_CONFLICT_TYPES: Final = {
    "hold_conflict",
    "lock_conflict",
    "constraint_conflict",
    "direct_lock_conflict",
    "direct_constraint_conflict",
}
# Session mix per strategy (weights; normalised).
_MIX: Final[dict[str, dict[str, float]]] = {
    "engine": {
        "booked": 40,
        "cancelled": 5,
        "abandoned": 12,
        "lapsed": 4,
        "expired": 3,
        "hold_conflict": 12,
        "lock_conflict": 2,
        "capacity": 2,
        "no_slot": 20,
    },
    "holds": {
        "booked": 40,
        "cancelled": 5,
        "abandoned": 12,
        "lapsed": 3,
        "expired": 3,
        "hold_conflict": 12,
        "lock_conflict": 2,
        "constraint_conflict": 0.5,
        "capacity": 2,
        "no_slot": 20,
        "error": 0.5,
    },
    "pessimistic": {"direct_booked": 45, "direct_lock_conflict": 35, "no_slot": 20},
    "constraint": {"direct_booked": 45, "direct_constraint_conflict": 35, "no_slot": 20},
}
# The contention study's workload: most customers race for a few hot slots.
_HOT_MIX: Final[dict[str, dict[str, float]]] = {
    "holds": {"booked": 20, "hold_conflict": 70, "lock_conflict": 1, "no_slot": 9},
    "pessimistic": {"direct_booked": 20, "direct_lock_conflict": 71, "no_slot": 9},
    "constraint": {"direct_booked": 20, "direct_constraint_conflict": 71, "no_slot": 9},
}
_HTTP_STATUS: Final = {"ok": 200, "conflict": 409, "capacity": 409, "no_slot": 200}
_HTTP_STATUS_OTHER: Final = {"expired": 410, "error": 500, "rejected": 422}


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One run of the dataset: its share of the attempts and how it was driven."""

    run_id: str
    kind: str
    strategies: tuple[str, ...]
    share: float
    http: bool  # latency and status recorded; `requests` rows written
    wall_window_s: int | None  # attempts spread over this many wall seconds (a load test)


def run_specs(seed: int) -> list[RunSpec]:
    """The runs of a dataset generated with `seed` (the DST run carries no attempts)."""
    return [
        RunSpec(f"sim-engine-{seed}", "simulate-engine", ("engine",), 0.6, False, None),
        RunSpec(f"sim-service-{seed}", "simulate-service", ("holds",), 0.25, True, None),
        RunSpec(
            f"contention-{seed}",
            "contention",
            ("holds", "pessimistic", "constraint"),
            0.15,
            True,
            900,
        ),
    ]


def generate(
    data_dir: Path,
    events: int,
    seed: int = 1,
    *,
    start: date = date(2026, 3, 2),
    days: int = 28,
    dst_anomalies: int = 0,
) -> dict[str, int]:
    """Write a dataset of about `events` attempts into `data_dir`; return rows per table.

    `start` is a Monday; the default spans March's DST changes in both hemispheres.
    `dst_anomalies` plants that many anomaly rows in the DST run (a clean sweep has none).
    """
    store = EventStore(data_dir)
    counts: dict[str, int] = {}
    for index, spec in enumerate(run_specs(seed)):
        rng = np.random.default_rng([seed, index])
        tables = _attempt_run(spec, round(events * spec.share), seed, start, days, rng)
        store.write(spec.run_id, tables)
        for table, df in tables.items():
            counts[table] = counts.get(table, 0) + df.height
    tables = _dst_run(f"dst-{seed}", seed, start, dst_anomalies)
    store.write(f"dst-{seed}", tables)
    for table, df in tables.items():
        counts[table] = counts.get(table, 0) + df.height
    return counts


def _utc(values: np.ndarray | pl.Series) -> pl.Series:
    return pl.Series(values, dtype=pl.Int64).cast(pl.Datetime("us", "UTC"))


def _cell_starts(start: date, days: int) -> tuple[np.ndarray, np.ndarray]:
    """UTC start (µs) of every cell per zone, shape (zones, workdays, cells), and workdays."""
    workdays = np.array([d for d in range(days) if (start + timedelta(d)).weekday() < 5])
    local = [
        datetime.combine(start + timedelta(int(d)), datetime.min.time()) + timedelta(hours=h)
        for d in workdays
        for h in CELL_HOURS
    ]
    per_zone = []
    for _, zone in TENANTS:
        utc = (
            pl.Series(local, dtype=pl.Datetime("us"))
            .dt.replace_time_zone(zone, ambiguous="earliest")
            .dt.convert_time_zone("UTC")
        )
        per_zone.append(utc.dt.epoch("us").to_numpy())
    shape = (len(TENANTS), len(workdays), len(CELL_HOURS))
    return np.stack(per_zone).reshape(shape), workdays


def _type_flags(names: set[str] | None = None, **where: bool) -> np.ndarray:
    """A boolean per session type: in `names`, or matching a predicate on its steps."""
    flags = np.array([names is not None and t in names for t in _TYPES])
    if where.get("holds"):
        flags |= np.array([("hold", "ok", None, None) in s for s in _STEPS.values()])
    if where.get("direct"):
        flags |= np.array([t.startswith("direct") for t in _TYPES])
    return flags


def _attempt_run(
    spec: RunSpec, events: int, seed: int, start: date, days: int, rng: np.random.Generator
) -> dict[str, pl.DataFrame]:
    cells, workdays = _cell_starts(start, days)
    n_days, n_cells = cells.shape[1], cells.shape[2]

    # Sessions (one customer's steps each) and their types, trimmed to `events` attempt rows.
    strategy_of = rng.integers(0, len(spec.strategies), size=max(events // 2, 1))
    types = np.empty(strategy_of.size, dtype=np.int64)
    for s, strategy in enumerate(spec.strategies):
        mix = (_HOT_MIX if spec.kind == "contention" else _MIX)[strategy]
        chosen = strategy_of == s
        p = np.array(list(mix.values()))
        types[chosen] = rng.choice(
            [_TYPES.index(t) for t in mix], size=int(chosen.sum()), p=p / p.sum()
        )
    lengths = np.array([len(_STEPS[t]) for t in _TYPES])
    n_sessions = int(np.searchsorted(np.cumsum(lengths[types]), events, side="right"))
    types, strategy_of = types[:n_sessions], strategy_of[:n_sessions]
    is_booking = _type_flags(_BOOKING_TYPES)[types]

    # Staff sized so that bookings fill about 60% of the cells they may take.
    per_staff = len(workdays) * n_cells * 0.85
    n_staff_total = max(len(TENANTS) * 2, math.ceil(is_booking.sum() / (0.6 * per_staff)))
    staff_per_tenant = np.maximum(2, np.round(_TENANT_WEIGHTS * n_staff_total)).astype(np.int64)
    rooms_per_tenant = np.maximum(1, staff_per_tenant // 2)
    staff_tenant = np.repeat(np.arange(len(TENANTS)), staff_per_tenant)
    staff_local = np.concatenate([np.arange(n) for n in staff_per_tenant])
    n_staff = staff_tenant.size
    # Appointments per local day; n_cells means the limit never binds (stored as null).
    capacity = rng.choice(np.array([n_cells, 6, 7]), size=n_staff)

    # Cells a staff member may be booked in: `capacity` random cells of each of their days.
    rank = np.argsort(np.argsort(rng.random((n_staff, n_days, n_cells)), axis=2), axis=2)
    pool = np.flatnonzero(rank < capacity[:, None, None])
    n_book = min(int(is_booking.sum()), pool.size)
    booked_cells = rng.choice(pool, size=n_book, replace=False)
    turned_away = np.flatnonzero(is_booking)[n_book:]  # more demand than cells
    types[turned_away] = _TYPES.index("no_slot")
    is_booking[turned_away] = False

    # Each session's cell: a booking its own, a conflict a booked one (hot ones far more
    # often), anything else any cell.
    cell = rng.integers(0, n_staff * n_days * n_cells, size=n_sessions)
    cell[is_booking] = booked_cells
    is_conflict = _type_flags(_CONFLICT_TYPES)[types]
    if n_book:
        hot = (n_book * rng.random(int(is_conflict.sum())) ** 4).astype(np.int64)
        cell[is_conflict] = booked_cells[rng.permutation(n_book)[hot]]
    else:
        types[is_conflict] = _TYPES.index("no_slot")
    staff, rest = np.divmod(cell, n_days * n_cells)
    day, hour = np.divmod(rest, n_cells)
    tenant = staff_tenant[staff]

    # Colour needs a room; room i of a tenant works only with its staff member i, so rooms
    # cannot double-book when staff don't.
    service_names = list(SERVICES)
    service = rng.integers(0, len(service_names), size=n_sessions)
    has_room = staff_local[staff] < rooms_per_tenant[tenant]
    service[(service == service_names.index("colour")) & ~has_room] = 0
    minutes = np.array([SERVICES[s][0] for s in service_names])[service]
    with_room = np.array([SERVICES[s][1] for s in service_names])[service]
    slot_start = cells[tenant, day, hour]
    slot_end = slot_start + minutes * 60 * US

    # The hold: some lead time before the slot (simulation) or within the load test's window.
    run_start_us = int(datetime.combine(start, datetime.min.time(), UTC).timestamp()) * US
    if spec.wall_window_s is None:
        hold_at = slot_start - (rng.exponential(2 * 86400, n_sessions) + 600).astype(np.int64) * US
    else:
        window = (spec.wall_window_s - 120) * US
        # After the availability look-ups that open the window (at most two minutes).
        hold_at = run_start_us + 120 * US + (rng.random(n_sessions) * window).astype(np.int64)
    after_hold = (np.minimum(rng.exponential(90, n_sessions), HOLD_TTL_S - 1) * US).astype(np.int64)
    offsets = np.stack(
        [
            -rng.integers(5, 120, n_sessions) * US,  # availability, before the hold
            np.zeros(n_sessions, dtype=np.int64),  # the hold
            after_hold,  # confirm / abandon (an expired confirm comes after the TTL)
            after_hold + rng.integers(3600, 2 * 86400, n_sessions) * US,  # cancel
        ],
        axis=1,
    )

    # One row per step, looked up in the flattened step table.
    step_lengths = lengths[types]
    session = np.repeat(np.arange(n_sessions), step_lengths)
    step = np.arange(session.size) - np.repeat(np.cumsum(step_lengths) - step_lengths, step_lengths)
    stype = types[session]
    flat = [s for t in _TYPES for s in _STEPS[t]]
    step_index = (np.cumsum(lengths) - lengths)[stype] + step
    action, outcome, layer, reason = (
        pl.Series([s[i] for s in flat], dtype=pl.String).gather(step_index) for i in range(4)
    )
    direct = _type_flags(direct=True)[stype]
    at = hold_at[session] + offsets[session, np.where(direct & (step == 1), 2, step.clip(0, 3))]
    at[(stype == _TYPES.index("expired")) & (step == 2)] += HOLD_TTL_S * US
    has_hold = _type_flags(holds=True)[stype] & (step >= 1)
    has_booking = is_booking[session] & action.is_in(["confirm", "cancel"]).to_numpy()
    slot_known = (outcome != "no_slot").to_numpy()

    # Strings are built once per session, then gathered per row in `at` order.
    ids = pl.Series(np.arange(n_sessions)).cast(pl.String)
    sessions = pl.DataFrame(
        {
            "tenant": pl.Series([t for t, _ in TENANTS]).gather(tenant),
            "customer_n": np.arange(n_sessions) * 2654435761 % max(n_sessions // 3, 1),
            "service": pl.Series(service_names).gather(service),
            "strategy": pl.Series(list(spec.strategies)).gather(strategy_of),
            "requested_start": slot_start
            + rng.choice(np.array([-60, -30, 0, 0, 0, 30]), n_sessions) * 60 * US,
            "slot_start": slot_start,
            "slot_end": slot_end,
            "zone": pl.Series([z for _, z in TENANTS]).gather(tenant),
            "sid": staff_local[staff],
            "room": with_room,
            "hold_id": "h" + ids,
            "booking_id": "b" + ids,
        }
    ).select(
        "tenant",
        pl.format("{}-c{}", "tenant", "customer_n").alias("customer"),
        "service",
        "strategy",
        _utc_expr("requested_start"),
        _utc_expr("slot_start"),
        _utc_expr("slot_end"),
        "zone",
        pl.concat_list(
            pl.format("{}-s{}", "tenant", "sid"),
            pl.when("room").then(pl.format("{}-r{}", "tenant", "sid")),
        )
        .list.drop_nulls()
        .alias("resource_ids"),
        "hold_id",
        "booking_id",
    )
    order = np.lexsort((step, session, at))
    rows = sessions[session[order]].with_columns(
        pl.Series("action", action.gather(order)),
        pl.Series("at", at[order]).cast(pl.Datetime("us", "UTC")),
        pl.Series("known", slot_known[order]),
        pl.Series("has_hold", has_hold[order]),
        pl.Series("has_booking", has_booking[order]),
        pl.Series("outcome", outcome.gather(order)),
        pl.Series("conflict_layer", layer.gather(order)),
        pl.Series("reason", reason.gather(order)),
    )
    attempts = rows.select(
        pl.lit(spec.run_id).alias("run_id"),
        pl.int_range(pl.len(), dtype=pl.Int64).alias("seq"),
        "tenant",
        "customer",
        "service",
        "strategy",
        "action",
        "at",
        "requested_start",
        *(pl.when("known").then(c).alias(c) for c in ("slot_start", "slot_end")),
        "zone",
        pl.when("known").then("resource_ids").alias("resource_ids"),
        pl.when("has_hold").then("hold_id").alias("hold_id"),
        pl.when("has_booking").then("booking_id").alias("booking_id"),
        "outcome",
        "conflict_layer",
        "reason",
    )
    if spec.http:
        latency = np.round(rng.lognormal(np.log(12), 0.6, attempts.height), 3)
        attempts = attempts.with_columns(
            pl.col("outcome")
            .replace_strict({**_HTTP_STATUS, **_HTTP_STATUS_OTHER}, return_dtype=pl.Int64)
            .alias("status"),
            (
                pl.Series(latency)
                * pl.col("action").replace_strict(
                    {"availability": 2.0, "confirm": 1.6}, default=1.0, return_dtype=pl.Float64
                )
            ).alias("latency_ms"),
        )

    tables = {
        "resources": _resources(spec.run_id, staff_per_tenant, rooms_per_tenant, capacity),
        "working": _working(spec.run_id, staff_per_tenant, rooms_per_tenant, cells),
        "attempts": attempts,
        "bookings": _bookings(
            spec.run_id,
            np.flatnonzero(is_booking),
            types,
            tenant,
            staff_local[staff],
            with_room,
            slot_start,
            slot_end,
        ),
    }
    if spec.wall_window_s is not None:
        tables["requests"] = _requests(attempts, run_start_us)
    if spec.kind == "contention":
        tables["contention"] = _contention(spec.run_id, attempts)
    tables["runs"] = _run_row(spec, seed, run_start_us, tables)
    return tables


def _utc_expr(name: str) -> pl.Expr:
    return pl.col(name).cast(pl.Datetime("us", "UTC")).alias(name)


def _resources(
    run_id: str, staff: np.ndarray, rooms: np.ndarray, capacity: np.ndarray
) -> pl.DataFrame:
    rows: list[dict[str, object]] = []
    k = 0
    for t, (name, zone) in enumerate(TENANTS):
        for i in range(int(staff[t])):
            skills = ["consult", "cut"] + (["colour"] if i < rooms[t] else [])
            cap = int(capacity[k])
            k += 1
            rows.append(
                {
                    "resource_id": f"{name}-s{i}",
                    "name": f"Staff {i + 1}",
                    "kind": "staff",
                    "skills": skills,
                    "daily_capacity": None if cap >= len(CELL_HOURS) else cap,
                    "tenant": name,
                    "zone": zone,
                }
            )
        rows.extend(
            {
                "resource_id": f"{name}-r{i}",
                "name": f"Room {i + 1}",
                "kind": "room",
                "skills": [],
                "tenant": name,
                "zone": zone,
            }
            for i in range(int(rooms[t]))
        )
    return frame("resources", pl.DataFrame(rows).with_columns(pl.lit(run_id).alias("run_id")))


def _working(run_id: str, staff: np.ndarray, rooms: np.ndarray, cells: np.ndarray) -> pl.DataFrame:
    """Every resource works each workday from its first cell to the end of its last."""
    parts = []
    for t, (name, zone) in enumerate(TENANTS):
        ids = [f"{name}-s{i}" for i in range(int(staff[t]))]
        ids += [f"{name}-r{i}" for i in range(int(rooms[t]))]
        days = cells.shape[1]
        parts.append(
            pl.DataFrame(
                {
                    "resource_id": np.repeat(ids, days),
                    "start": np.tile(cells[t, :, 0], len(ids)),
                    "end": np.tile(cells[t, :, -1] + 3600 * US, len(ids)),
                }
            ).with_columns(pl.lit(name).alias("tenant"), pl.lit(zone).alias("zone"))
        )
    return pl.concat(parts).select(
        pl.lit(run_id).alias("run_id"),
        "tenant",
        "resource_id",
        "zone",
        _utc_expr("start"),
        _utc_expr("end"),
    )


def _bookings(
    run_id: str,
    booked: np.ndarray,
    types: np.ndarray,
    tenant: np.ndarray,
    staff_local: np.ndarray,
    with_room: np.ndarray,
    slot_start: np.ndarray,
    slot_end: np.ndarray,
) -> pl.DataFrame:
    """One row per booked resource; a booking its customer cancelled is `cancelled`."""
    per_booking = pl.DataFrame(
        {
            "tenant": pl.Series([t for t, _ in TENANTS]).gather(tenant[booked]),
            "booking_id": booked,
            "sid": staff_local[booked],
            "zone": pl.Series([z for _, z in TENANTS]).gather(tenant[booked]),
            "start": slot_start[booked],
            "end": slot_end[booked],
            "cancelled": types[booked] == _TYPES.index("cancelled"),
            "room": with_room[booked],
        }
    )
    return pl.concat(
        [
            per_booking.with_columns(pl.format("{}-s{}", "tenant", "sid").alias("resource_id")),
            per_booking.filter("room").with_columns(
                pl.format("{}-r{}", "tenant", "sid").alias("resource_id")
            ),
        ]
    ).select(
        pl.lit(run_id).alias("run_id"),
        "tenant",
        pl.format("b{}", "booking_id").alias("booking_id"),
        "resource_id",
        "zone",
        _utc_expr("start"),
        _utc_expr("end"),
        pl.when("cancelled").then(pl.lit("cancelled")).otherwise(pl.lit("active")).alias("status"),
    )


def _requests(attempts: pl.DataFrame, run_start_us: int) -> pl.DataFrame:
    """What the load client saw: one request per attempt, timed from the run's start."""
    return attempts.select(
        "run_id",
        "strategy",
        pl.col("action").alias("name"),
        ((pl.col("at").dt.epoch("us") - run_start_us) / US).alias("t_s"),
        pl.when(pl.col("outcome") == "error").then(0).otherwise(pl.col("status")).alias("status"),
        "outcome",
        "latency_ms",
    )


def _contention(run_id: str, attempts: pl.DataFrame) -> pl.DataFrame:
    """Per strategy, the figures the study reads from PostgreSQL, derived from the attempts:
    with holds only hold winners reach the database; without, every confirmation does."""
    confirm = pl.col("action") == "confirm"
    conflict = confirm & (pl.col("outcome") == "conflict")
    per = (
        attempts.group_by("strategy")
        .agg(
            pl.col("customer").filter(pl.col("action") == "availability").len().alias("attempts"),
            (confirm & (pl.col("outcome") == "ok")).sum().alias("confirmed"),
            confirm.sum().alias("db_transactions"),
            (confirm & (pl.col("outcome") != "ok")).sum().alias("db_rollbacks"),
            (conflict & (pl.col("conflict_layer") == "lock")).sum().alias("lock_waits"),
            (conflict & (pl.col("conflict_layer") == "constraint"))
            .sum()
            .alias("constraint_violations"),
            pl.col("latency_ms").quantile(0.5, "linear").alias("p50_ms"),
            pl.col("latency_ms").quantile(0.99, "linear").alias("p99_ms"),
        )
        .with_columns(
            pl.lit(0, pl.Int64).alias("deadlocks"),
            (pl.col("db_transactions") / pl.col("confirmed")).alias("transactions_per_success"),
            (pl.col("lock_waits") + pl.col("db_rollbacks")).alias("db_collisions"),
            (pl.col("lock_waits") * 0.005).alias("lock_wait_s"),  # one sampling period each
        )
        .sort("strategy")
    )
    pessimistic = per.filter(pl.col("strategy") == "pessimistic")["db_collisions"]
    base = pessimistic[0] if pessimistic.len() else None
    per = per.with_columns(
        (1 - pl.col("db_collisions") / base).alias("reduction_vs_pessimistic")
        if base
        else pl.lit(None, pl.Float64).alias("reduction_vs_pessimistic"),
        pl.lit(run_id).alias("run_id"),
    )
    return frame("contention", per)


def _run_row(
    spec: RunSpec, seed: int, run_start_us: int, tables: dict[str, pl.DataFrame]
) -> pl.DataFrame:
    params = {"strategies": list(spec.strategies), "synthetic": True}
    summary = {table: df.height for table, df in tables.items()}
    return frame(
        "runs",
        pl.DataFrame(
            {
                "run_id": [spec.run_id],
                "kind": [spec.kind],
                "seed": [seed],
                "started_at": _utc(np.array([run_start_us])),
                "params": [json.dumps(params, sort_keys=True)],
                "summary": [json.dumps(summary, sort_keys=True)],
            }
        ),
    )


def _dst_run(run_id: str, seed: int, start: date, anomalies: int) -> dict[str, pl.DataFrame]:
    """The tenants' zones' real transitions in `start`'s year (15-minute scan), with
    `anomalies` planted anomaly rows (a clean sweep has none)."""
    year = start.year
    grid = pl.datetime_range(
        datetime(year, 1, 1, tzinfo=UTC),
        datetime(year + 1, 1, 1, tzinfo=UTC),
        timedelta(minutes=15),
        eager=True,
        time_unit="us",
    )
    parts = []
    for _, zone in sorted(set(TENANTS)):
        local = grid.dt.convert_time_zone(zone).dt.replace_time_zone(None)
        offset = (local.dt.epoch("s") - grid.dt.epoch("s")).alias("offset")
        parts.append(
            pl.DataFrame({"at": grid, "offset": offset})
            .with_columns(pl.col("offset").shift(1).alias("before"))
            .filter(pl.col("before").is_not_null() & (pl.col("offset") != pl.col("before")))
            .select(
                pl.lit(run_id).alias("run_id"),
                pl.lit(zone).alias("zone"),
                "at",
                pl.col("before").alias("offset_before_s"),
                pl.col("offset").alias("offset_after_s"),
                pl.when(pl.col("offset") > pl.col("before"))
                .then(pl.lit("gap"))
                .otherwise(pl.lit("fold"))
                .alias("kind"),
            )
        )
    transitions = pl.concat(parts)
    planted = transitions.head(anomalies).select(
        "run_id",
        "zone",
        pl.col("at").alias("transition_at"),
        (pl.col("at").dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT02:30:00")).alias(
            "series_local_start"
        ),
        pl.lit("wall_time").alias("check"),
        pl.lit("planted: instance moved off its local wall time").alias("detail"),
    )
    zones = (
        pl.DataFrame({"zone": sorted({z for _, z in TENANTS})})
        .join(transitions.group_by("zone").len("transitions"), on="zone", how="left")
        .join(planted.group_by("zone").len("violations"), on="zone", how="left")
        .select(
            pl.lit(run_id).alias("run_id"),
            "zone",
            pl.col("transitions").fill_null(0),
            (pl.col("transitions").fill_null(0) * 24).alias("instances"),
            pl.col("violations").fill_null(0),
        )
    )
    run = {
        "run_id": [run_id],
        "kind": ["dst"],
        "seed": [seed],
        "started_at": [datetime(year, 1, 1, tzinfo=UTC)],
        "params": [json.dumps({"synthetic": True, "year": year}, sort_keys=True)],
        "summary": [json.dumps({"anomalies": anomalies}, sort_keys=True)],
    }
    return {
        "runs": frame("runs", pl.DataFrame(run)),
        "dst_zones": zones,
        "dst_transitions": transitions,
        "dst_anomalies": planted,
    }
