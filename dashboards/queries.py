"""Every dashboard query, as plain DuckDB SQL over the workbench tables (`simulation/events.py`).

Each function takes a DuckDB connection and the page's `Filters` and returns a Polars frame.
SQL text is fixed; filter values are always bound parameters, and only the choice of which fixed
`WHERE` fragments apply depends on which filters are set.

Local time: instants are UTC; a local-time question converts with the row's IANA zone
(`timezone(zone, ts)`, ICU). ICU conversion costs microseconds per value, so the big tables are
first reduced to distinct (zone, 15-minute UTC quarter) pairs and only those are converted: every
zone's offset is a multiple of 15 minutes and changes only on a quarter boundary, so a quarter
lies in exactly one local hour and has one offset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import duckdb
import polars as pl

from simulation.events import DATABASE_FILE, TABLES, create_tables

QUARTER_US = 900_000_000  # 15 minutes in microseconds
DATA_ENV = "SLOTWISE_WORKBENCH_DIR"  # the workbench data directory the dashboards read


@dataclass(frozen=True, slots=True)
class Filters:
    """What every page filters on; `None` means no filter. Dates are UTC days, both included."""

    run_id: str | None = None
    tenant: str | None = None
    start: date | None = None
    end: date | None = None


def connect(data_dir: Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the workbench database, or an empty in-memory one with the
    same tables when nothing has been written yet (so every page renders its empty state).

    Close it soon: while it is open DuckDB's file lock keeps writers (the simulator, the load
    tests) out.
    """
    path = data_dir / DATABASE_FILE
    if path.exists():
        con = duckdb.connect(str(path), read_only=True)
        present = {
            row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
        }
        for table in TABLES.keys() - present:  # written by an older schema: read as empty
            empty = pl.DataFrame(schema=TABLES[table])  # noqa: F841 - read by DuckDB
            con.execute(f"CREATE TEMP TABLE {table} AS SELECT * FROM empty")
    else:
        con = duckdb.connect()
        create_tables(con)
    con.execute("SET TimeZone = 'UTC'")
    return con


def _where(
    f: Filters, *, time_col: str | None = None, tenant: bool = True, alias: str = ""
) -> tuple[str, dict[str, object]]:
    """The `WHERE` conditions (fixed fragments) and parameters for `f` on one table."""
    clauses, params = ["TRUE"], {}
    if f.run_id is not None:
        clauses.append(f"{alias}run_id = $run")
        params["run"] = f.run_id
    if tenant and f.tenant is not None:
        clauses.append(f"{alias}tenant = $tenant")
        params["tenant"] = f.tenant
    if time_col is not None and f.start is not None:
        clauses.append(f'{alias}"{time_col}" >= $from')
        params["from"] = datetime.combine(f.start, time(), UTC)
    if time_col is not None and f.end is not None:
        clauses.append(f'{alias}"{time_col}" < $to')
        params["to"] = datetime.combine(f.end + timedelta(days=1), time(), UTC)
    return " AND ".join(clauses), params


def _run_dates(f: Filters) -> tuple[str, dict[str, object]]:
    """Tables without tenant or absolute time (requests, contention, DST) filter by run, and by
    date through the run's start (a run without a `runs` row is never hidden)."""
    where, params = _where(f, tenant=False)
    if f.start is None and f.end is None:
        return where, params
    dates, date_params = _where(Filters(start=f.start, end=f.end), time_col="started_at")
    sql = (
        f"{where} AND (run_id IN (SELECT run_id FROM runs WHERE {dates})"
        " OR run_id NOT IN (SELECT run_id FROM runs))"
    )
    return sql, {**params, **date_params}


def _frame(
    con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, object] | None = None
) -> pl.DataFrame:
    return con.execute(sql, params or {}).pl()


# ---------------------------------------------------------------- runs and filters


def runs(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """Every run, newest first (the run filter's choices)."""
    return _frame(
        con,
        "SELECT run_id, kind, seed, started_at, params, summary FROM runs"
        " ORDER BY started_at DESC, run_id",
    )


def tenants(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """Tenants with resources or attempts in the selected run (the tenant filter's choices)."""
    where, params = _where(f, tenant=False)
    return _frame(
        con,
        f"SELECT tenant FROM resources WHERE {where}"
        f" UNION SELECT DISTINCT tenant FROM attempts WHERE {where} ORDER BY tenant",
        params,
    )


def time_bounds(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """First and last UTC day with data in the selected run (the date filter's range)."""
    where, params = _where(f, tenant=False)
    return _frame(
        con,
        f"""
        SELECT min(lo)::DATE AS first_day, max(hi)::DATE AS last_day FROM (
            SELECT min("at") AS lo, max("at") AS hi FROM attempts WHERE {where}
            UNION ALL SELECT min(start), max(start) FROM bookings WHERE {where}
            UNION ALL SELECT min(start), max(start) FROM working WHERE {where}
            UNION ALL SELECT min(started_at), max(started_at) FROM runs WHERE {where}
        )
        """,
        params,
    )


def overview(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """Headline figures: attempts, confirmed bookings, conflicts refused, tenants."""
    where, params = _where(f, time_col="at")
    return _frame(
        con,
        f"""
        SELECT count(*) AS attempts,
               count(*) FILTER (action IN ('confirm', 'reschedule') AND outcome = 'ok')
                   AS confirmed,
               count(*) FILTER (outcome = 'conflict') AS conflicts_refused,
               count(*) FILTER (outcome = 'error') AS errors,
               count(DISTINCT tenant) AS tenants,
               count(DISTINCT run_id) AS runs
        FROM attempts WHERE {where}
        """,
        params,
    )


# ---------------------------------------------------------------- utilization

# Working and active booked minutes per resource (per run: resource ids are per run).
_RESOURCE_MINUTES = """
    minutes AS (
        SELECT r.run_id, r.tenant, r.resource_id, r.name, r.kind, r.zone,
               coalesce(a.available_min, 0) AS available_min,
               coalesce(b.booked_min, 0) AS booked_min,
               coalesce(b.bookings, 0)::BIGINT AS bookings
        FROM resources r
        LEFT JOIN (
            SELECT run_id, resource_id, sum(epoch("end") - epoch(start)) / 60 AS available_min
            FROM working WHERE {working} GROUP BY ALL
        ) a USING (run_id, resource_id)
        LEFT JOIN (
            SELECT run_id, resource_id, sum(epoch("end") - epoch(start)) / 60 AS booked_min,
                   count(*) AS bookings
            FROM bookings WHERE status = 'active' AND {bookings} GROUP BY ALL
        ) b USING (run_id, resource_id)
        WHERE {resources}
    )
"""


def _minutes_cte(f: Filters) -> tuple[str, dict[str, object]]:
    working, params = _where(f, time_col="start")
    resources, more = _where(f, alias="r.")
    cte = _RESOURCE_MINUTES.format(working=working, bookings=working, resources=resources)
    return cte, {**params, **more}


def utilization_by_tenant(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """Per tenant: resources, available (working) and booked minutes, utilization, idle count."""
    cte, params = _minutes_cte(f)
    return _frame(
        con,
        f"""
        WITH {cte}
        SELECT tenant, count(DISTINCT resource_id) AS resources,
               sum(available_min) AS available_min, sum(booked_min) AS booked_min,
               sum(booked_min) / nullif(sum(available_min), 0) AS utilization,
               sum(bookings)::BIGINT AS bookings
        FROM minutes GROUP BY tenant ORDER BY tenant
        """,
        params,
    )


def utilization_by_resource(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """Per resource (summed over the selected runs): available and booked minutes, utilization."""
    cte, params = _minutes_cte(f)
    return _frame(
        con,
        f"""
        WITH {cte}
        SELECT tenant, resource_id, any_value(name) AS name, any_value(kind) AS kind,
               any_value(zone) AS zone, sum(available_min) AS available_min,
               sum(booked_min) AS booked_min,
               sum(booked_min) / nullif(sum(available_min), 0) AS utilization,
               sum(bookings)::BIGINT AS bookings
        FROM minutes GROUP BY tenant, resource_id
        ORDER BY utilization DESC NULLS LAST, tenant, resource_id
        """,
        params,
    )


def idle_resources(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """Resources that worked in the period but have no active booking in it."""
    cte, params = _minutes_cte(f)
    return _frame(
        con,
        f"""
        WITH {cte}
        SELECT tenant, resource_id, any_value(name) AS name, any_value(kind) AS kind,
               sum(available_min) AS available_min
        FROM minutes GROUP BY tenant, resource_id
        HAVING sum(available_min) > 0 AND sum(bookings) = 0
        ORDER BY tenant, resource_id
        """,
        params,
    )


def utilization_heatmap(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """Booked vs available minutes per hour of the week, in each row's own local time.

    Intervals are cut into 15-minute UTC quarters (identical intervals first counted once),
    and each distinct (zone, quarter) is converted to local time.
    """
    where, params = _where(f, time_col="start")
    return _frame(
        con,
        f"""
        WITH pieces AS (
            SELECT 'booked' AS what, zone, epoch_us(start) AS s, epoch_us("end") AS e,
                   count(*) AS n
            FROM bookings WHERE status = 'active' AND {where} GROUP BY ALL
            UNION ALL
            SELECT 'available', zone, epoch_us(start), epoch_us("end"), count(*)
            FROM working WHERE {where} GROUP BY ALL
        ),
        quarters AS (
            SELECT what, zone, q,
                   sum(n * (least(e, q + {QUARTER_US}) - greatest(s, q))) AS us
            FROM (
                SELECT what, zone, s, e, n,
                       unnest(range(s - s % {QUARTER_US}, e, {QUARTER_US})) AS q
                FROM pieces
            )
            GROUP BY ALL
        ),
        local AS (
            SELECT zone, q, timezone(zone, to_timestamp(q // 1000000)) AS lt
            FROM (SELECT DISTINCT zone, q FROM quarters)
        )
        SELECT isodow(lt) AS dow, strftime(lt, '%a') AS day, hour(lt) AS hour,
               coalesce(sum(us) FILTER (what = 'available'), 0) / 60e6 AS available_min,
               coalesce(sum(us) FILTER (what = 'booked'), 0) / 60e6 AS booked_min,
               sum(us) FILTER (what = 'booked')
                   / nullif(sum(us) FILTER (what = 'available'), 0) AS utilization
        FROM quarters JOIN local USING (zone, q)
        GROUP BY ALL ORDER BY dow, hour
        """,
        params,
    )


# Active bookings of staff with a daily capacity, counted per local day of the staff's zone.
_STAFF_DAYS = """
    staff AS (
        SELECT run_id, tenant, resource_id, name, daily_capacity FROM resources
        WHERE kind = 'staff' AND daily_capacity IS NOT NULL AND {resources}
    ),
    booked AS (
        SELECT b.run_id, b.resource_id, b.zone, epoch_us(b.start) AS s
        FROM bookings b SEMI JOIN staff USING (run_id, resource_id)
        WHERE b.status = 'active' AND {bookings}
    ),
    offsets AS (
        SELECT zone, q,
               epoch_us(timezone(zone, to_timestamp(q // 1000000))) - q AS offset_us
        FROM (SELECT DISTINCT zone, s - s % {quarter} AS q FROM booked)
    ),
    days AS (
        SELECT run_id, resource_id, (s + offset_us) // 86400000000 AS day, count(*) AS used
        FROM booked JOIN offsets ON offsets.zone = booked.zone
            AND offsets.q = booked.s - booked.s % {quarter}
        GROUP BY ALL
    ),
    staff_days AS (
        SELECT staff.tenant, staff.resource_id, staff.name, staff.daily_capacity, days.used
        FROM days JOIN staff USING (run_id, resource_id)
    )
"""


def _staff_days_cte(f: Filters) -> tuple[str, dict[str, object]]:
    resources, params = _where(f)
    bookings, more = _where(f, time_col="start", alias="b.")
    cte = _STAFF_DAYS.format(resources=resources, bookings=bookings, quarter=QUARTER_US)
    return cte, {**params, **more}


def daily_capacity(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """Per staff member with a daily capacity: days booked, most and mean appointments in a
    local day, days at capacity, and days over it (the service must keep that at 0)."""
    cte, params = _staff_days_cte(f)
    return _frame(
        con,
        f"""
        WITH {cte}
        SELECT tenant, resource_id, any_value(name) AS name,
               any_value(daily_capacity) AS daily_capacity, count(*) AS days_booked,
               max(used) AS max_used, avg(used) AS mean_used,
               avg(used / daily_capacity) AS mean_fill,
               count(*) FILTER (used >= daily_capacity) AS days_at_capacity,
               count(*) FILTER (used > daily_capacity) AS days_over_capacity
        FROM staff_days GROUP BY tenant, resource_id
        ORDER BY days_over_capacity DESC, mean_fill DESC, tenant, resource_id
        """,
        params,
    )


def capacity_fill(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """Staff-days by appointments used and daily capacity (the capacity-use distribution)."""
    cte, params = _staff_days_cte(f)
    return _frame(
        con,
        f"""
        WITH {cte}
        SELECT daily_capacity, used, count(*) AS staff_days
        FROM staff_days GROUP BY ALL ORDER BY daily_capacity, used
        """,
        params,
    )


# ---------------------------------------------------------------- conflicts


def conflict_summary(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """Hold collisions, confirmation conflicts, and the attempts they are out of."""
    where, params = _where(f, time_col="at")
    return _frame(
        con,
        f"""
        SELECT count(*) FILTER (action = 'hold') AS hold_attempts,
               count(*) FILTER (action = 'hold' AND outcome = 'conflict') AS hold_collisions,
               count(*) FILTER (action IN ('confirm', 'reschedule')) AS confirmations,
               count(*) FILTER (action IN ('confirm', 'reschedule') AND outcome = 'conflict')
                   AS confirmation_conflicts,
               count(*) FILTER (outcome = 'conflict') AS conflicts
        FROM attempts WHERE {where}
        """,
        params,
    )


def conflicts_by_layer(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """Conflicts each protection layer (hold, lock, constraint) refused, per tenant."""
    where, params = _where(f, time_col="at")
    return _frame(
        con,
        f"""
        SELECT tenant, coalesce(conflict_layer, 'unknown') AS layer, count(*) AS conflicts
        FROM attempts WHERE outcome = 'conflict' AND {where}
        GROUP BY ALL ORDER BY tenant, layer
        """,
        params,
    )


def verified_double_bookings(
    con: duckdb.DuckDBPyConnection, f: Filters = Filters()
) -> pl.DataFrame:
    """Double bookings the load-test verifier counted in PostgreSQL, per load-test run (those
    runs write no `bookings` rows here: their verdict is in the run's summary; a contention
    study's summary holds one line per strategy)."""
    where, params = _run_dates(f)
    return _frame(
        con,
        f"""
        SELECT run_id, kind, coalesce(
                   CAST(json_extract(summary, '$.double_bookings') AS BIGINT),
                   list_sum(CAST(json_extract(summary, '$.lines[*].double_bookings')
                                 AS BIGINT[]))) AS double_bookings
        FROM runs
        WHERE kind IN ('burst', 'sustained', 'contention') AND {where}
        ORDER BY run_id
        """,
        params,
    )


def double_bookings(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """Every pair of active bookings that overlap on one resource (must be empty).

    Checked over all active bookings of the selected runs and tenant: the date range never
    hides one. A running maximum of earlier ends finds the resources with any overlap in one
    sorted pass; only those are paired up.
    """
    where, params = _where(f)
    return _frame(
        con,
        f"""
        WITH b AS (
            SELECT run_id, tenant, resource_id, booking_id, start, "end" FROM bookings
            WHERE status = 'active' AND {where}
        ),
        flagged AS (
            SELECT DISTINCT run_id, resource_id FROM (
                SELECT run_id, resource_id, start,
                       max("end") OVER (
                           PARTITION BY run_id, resource_id ORDER BY start, booking_id
                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
                       ) AS earlier_end
                FROM b
            ) WHERE start < earlier_end
        ),
        suspects AS (SELECT * FROM b SEMI JOIN flagged USING (run_id, resource_id))
        SELECT x.run_id, x.tenant, x.resource_id, x.booking_id AS booking_a,
               y.booking_id AS booking_b, x.start AS a_start, x."end" AS a_end,
               y.start AS b_start, y."end" AS b_end
        FROM suspects x JOIN suspects y
          ON x.run_id = y.run_id AND x.resource_id = y.resource_id
         AND x.booking_id < y.booking_id AND x.start < y."end" AND y.start < x."end"
        ORDER BY x.run_id, x.resource_id, x.start, y.start
        """,
        params,
    )


def conflict_hotspots(
    con: duckdb.DuckDBPyConnection, f: Filters = Filters(), limit: int = 20
) -> pl.DataFrame:
    """The slots most fought over: conflicts per (tenant, slot start), most first, with the
    slot's local start in the tenant's zone and the resources fought over.

    The resource lists are read only for the top slots (a list column is slow to scan)."""
    where, params = _where(f, time_col="at")
    return _frame(
        con,
        f"""
        WITH top AS (
            SELECT tenant, zone, slot_start, count(*) AS conflicts,
                   count(*) FILTER (conflict_layer = 'hold') AS hold,
                   count(*) FILTER (conflict_layer = 'lock') AS lock,
                   count(*) FILTER (conflict_layer = 'constraint') AS "constraint"
            FROM attempts
            WHERE outcome = 'conflict' AND slot_start IS NOT NULL AND {where}
            GROUP BY ALL ORDER BY conflicts DESC, slot_start, tenant LIMIT $limit
        ),
        fought AS (
            SELECT tenant, slot_start, string_agg(DISTINCT resource_ids[1], ', ' ORDER BY
                   resource_ids[1]) AS resources
            FROM attempts SEMI JOIN top USING (tenant, slot_start)
            WHERE outcome = 'conflict' AND {where}
            GROUP BY ALL
        )
        SELECT tenant, strftime(timezone(zone, slot_start), '%a %Y-%m-%d %H:%M') AS local_start,
               zone, slot_start, resources, conflicts, hold, lock, "constraint"
        FROM top LEFT JOIN fought USING (tenant, slot_start)
        ORDER BY conflicts DESC, slot_start, tenant
        """,
        {**params, "limit": limit},
    )


# ---------------------------------------------------------------- holds funnel

# Each hold taken in the period and its fate, through `hold_id` (one pass): confirmed (a confirm
# succeeded), abandoned (released by the customer), refused (its confirmation was refused:
# conflict, capacity, error) or expired (the TTL ran out: an `expired` answer or no follow-up).
_HOLD_FATES = """
    per_hold AS (
        SELECT run_id, hold_id, any_value(tenant) AS tenant,
               min("at") FILTER (action = 'hold' AND outcome = 'ok') AS held_at,
               min("at") FILTER (action = 'confirm' AND outcome = 'ok') AS confirmed_at,
               bool_or(action = 'abandon' AND outcome = 'ok') AS abandoned,
               bool_or(action = 'confirm' AND outcome NOT IN ('ok', 'expired')) AS refused
        FROM attempts
        WHERE hold_id IS NOT NULL AND {rows}  -- other actions carrying the id count for nothing
        GROUP BY run_id, hold_id
    ),
    fates AS (
        SELECT tenant, held_at, confirmed_at,
               CASE WHEN confirmed_at IS NOT NULL THEN 'confirmed'
                    WHEN abandoned THEN 'abandoned'
                    WHEN refused THEN 'refused'
                    ELSE 'expired' END AS fate
        FROM per_hold WHERE held_at IS NOT NULL AND {held}
    )
"""


def _fates_cte(f: Filters) -> tuple[str, dict[str, object]]:
    # The date range selects holds by when they were taken: a confirm just after the period
    # still settles its hold, so the rows themselves are filtered by run and tenant only.
    rows, params = _where(f)
    held, more = _where(Filters(start=f.start, end=f.end), time_col="held_at")
    return _HOLD_FATES.format(rows=rows, held=held), {**params, **more}


def hold_funnel(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """Holds taken per tenant and fate (confirmed, abandoned, refused, expired)."""
    cte, params = _fates_cte(f)
    return _frame(
        con,
        f"""
        WITH {cte}
        SELECT tenant, fate, count(*) AS holds FROM fates GROUP BY ALL ORDER BY tenant, fate
        """,
        params,
    )


def time_to_confirm(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """Seconds from hold to successful confirmation: percentiles over confirmed holds."""
    cte, params = _fates_cte(f)
    return _frame(
        con,
        f"""
        WITH {cte}, waits AS (
            SELECT epoch(confirmed_at) - epoch(held_at) AS s FROM fates WHERE fate = 'confirmed'
        )
        SELECT count(*) AS confirmed, quantile_cont(s, 0.5) AS p50_s,
               quantile_cont(s, 0.9) AS p90_s, quantile_cont(s, 0.99) AS p99_s, max(s) AS max_s
        FROM waits
        """,
        params,
    )


def time_to_confirm_histogram(
    con: duckdb.DuckDBPyConnection, f: Filters = Filters()
) -> pl.DataFrame:
    """Confirmed holds by time to confirm, in bins a person reads at a glance."""
    cte, params = _fates_cte(f)
    return _frame(
        con,
        f"""
        WITH {cte}, waits AS (
            SELECT epoch(confirmed_at) - epoch(held_at) AS s FROM fates WHERE fate = 'confirmed'
        ),
        -- Each wait's bin computed in one pass, then joined to the bins on equality (a range
        -- join of the bins against every wait was this page's slowest query).
        binned AS (
            SELECT CASE WHEN s < 10 THEN 1 WHEN s < 30 THEN 2 WHEN s < 60 THEN 3
                        WHEN s < 120 THEN 4 WHEN s < 300 THEN 5 WHEN s < 600 THEN 6
                        ELSE 7 END AS bin,
                   count(*) AS holds
            FROM waits WHERE s >= 0 GROUP BY 1
        ),
        bins(bin, label) AS (VALUES
            (1, '< 10 s'), (2, '10-30 s'), (3, '30-60 s'), (4, '1-2 min'), (5, '2-5 min'),
            (6, '5-10 min'), (7, '≥ 10 min')
        )
        SELECT bin, label, coalesce(holds, 0) AS holds
        FROM bins LEFT JOIN binned USING (bin) ORDER BY bin
        """,
        params,
    )


# ---------------------------------------------------------------- load tests

_ERROR = "(outcome = 'error' OR status = 0 OR status >= 500)"


def latency_over_time(
    con: duckdb.DuckDBPyConnection, f: Filters = Filters(), points: int = 120
) -> pl.DataFrame:
    """Per run and strategy, in about `points` time buckets: requests/s, errors/s and latency
    percentiles (ms)."""
    where, params = _run_dates(f)
    return _frame(
        con,
        f"""
        WITH r AS (SELECT * FROM requests WHERE {where}),
        width AS (SELECT greatest(1, ceil(max(t_s) / $points)) AS w FROM r)
        SELECT run_id, strategy, floor(t_s / w) * w AS t_s,
               count(*) / any_value(w) AS requests_per_s,
               count(*) FILTER {_ERROR} / any_value(w) AS errors_per_s,
               quantile_cont(latency_ms, 0.5) AS p50_ms,
               quantile_cont(latency_ms, 0.95) AS p95_ms,
               quantile_cont(latency_ms, 0.99) AS p99_ms
        FROM r, width GROUP BY ALL ORDER BY run_id, strategy, t_s
        """,
        {**params, "points": points},
    )


def load_summary(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """Per run, strategy and endpoint: requests, throughput, latency percentiles, errors."""
    where, params = _run_dates(f)
    return _frame(
        con,
        f"""
        SELECT run_id, strategy, name, count(*) AS requests,
               count(*) / nullif(max(t_s) - min(t_s), 0) AS requests_per_s,
               quantile_cont(latency_ms, 0.5) AS p50_ms,
               quantile_cont(latency_ms, 0.95) AS p95_ms,
               quantile_cont(latency_ms, 0.99) AS p99_ms,
               count(*) FILTER {_ERROR} AS errors,
               count(*) FILTER {_ERROR} / count(*) AS error_rate
        FROM requests WHERE {where}
        GROUP BY ALL ORDER BY run_id, strategy, name
        """,
        params,
    )


def request_errors(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """Failed requests (5xx, no answer, transport errors) by endpoint and status."""
    where, params = _run_dates(f)
    return _frame(
        con,
        f"""
        SELECT run_id, strategy, name, status, outcome, count(*) AS requests
        FROM requests WHERE {_ERROR} AND {where}
        GROUP BY ALL ORDER BY requests DESC, run_id, strategy, name
        """,
        params,
    )


def contention(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """The contention study: each strategy's database figures side by side."""
    where, params = _run_dates(f)
    return _frame(
        con,
        f"SELECT * FROM contention WHERE {where} ORDER BY run_id, strategy",
        params,
    )


# ---------------------------------------------------------------- DST


def dst_summary(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """The sweep in five numbers: zones, transitions, instances, violations, anomalies."""
    where, params = _run_dates(f)
    return _frame(
        con,
        f"""
        SELECT count(*) AS zones, coalesce(sum(transitions), 0)::BIGINT AS transitions,
               coalesce(sum(instances), 0)::BIGINT AS instances,
               coalesce(sum(violations), 0)::BIGINT AS violations,
               (SELECT count(*) FROM dst_anomalies WHERE {where}) AS anomalies
        FROM dst_zones WHERE {where}
        """,
        params,
    )


def dst_zones(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """Per zone swept: transitions, instances checked, violations (worst first)."""
    where, params = _run_dates(f)
    return _frame(
        con,
        f"""
        SELECT run_id, zone, transitions, instances, violations FROM dst_zones
        WHERE {where} ORDER BY violations DESC, zone, run_id
        """,
        params,
    )


def dst_transitions(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """Transitions in the date range, with the local wall clock just before and after."""
    where, params = _where(f, time_col="at", tenant=False)
    return _frame(
        con,
        f"""
        SELECT run_id, zone, "at", kind, offset_before_s, offset_after_s,
               (offset_after_s - offset_before_s) / 60 AS shift_min,
               strftime(make_timestamp(epoch_us("at") + offset_before_s * 1000000),
                        '%Y-%m-%d %H:%M') AS local_before,
               strftime(make_timestamp(epoch_us("at") + offset_after_s * 1000000),
                        '%Y-%m-%d %H:%M') AS local_after
        FROM dst_transitions WHERE {where} ORDER BY "at", zone, run_id
        """,
        params,
    )


def dst_anomalies(con: duckdb.DuckDBPyConnection, f: Filters = Filters()) -> pl.DataFrame:
    """Every anomaly the sweep found (must be empty)."""
    where, params = _where(f, time_col="transition_at", tenant=False)
    return _frame(
        con,
        f"""
        SELECT run_id, zone, transition_at, series_local_start, "check", detail
        FROM dst_anomalies WHERE {where} ORDER BY zone, transition_at, run_id
        """,
        params,
    )


Query = Callable[[duckdb.DuckDBPyConnection, Filters], pl.DataFrame]

# Every query the pages run, by name (the benchmark and the tests run them all).
QUERIES: dict[str, Query] = {
    query.__name__: query
    for query in (
        runs,
        tenants,
        time_bounds,
        overview,
        utilization_by_tenant,
        utilization_by_resource,
        idle_resources,
        utilization_heatmap,
        daily_capacity,
        capacity_fill,
        conflict_summary,
        conflicts_by_layer,
        double_bookings,
        verified_double_bookings,
        conflict_hotspots,
        hold_funnel,
        time_to_confirm,
        time_to_confirm_histogram,
        latency_over_time,
        load_summary,
        request_errors,
        contention,
        dst_summary,
        dst_zones,
        dst_transitions,
        dst_anomalies,
    )
}
