"""The workbench's event store: one schema, written as Parquet and loaded into one DuckDB file.

Simulations and load tests write here; dashboards and notebooks only read the DuckDB file
(`<data dir>/slotwise.duckdb`, tables named as in `TABLES`). Every row carries the `run_id` of
the run that wrote it; writing a run again replaces its rows, so a rerun with the same seed
leaves the same data, and `<data dir>/parquet/<table>/<run_id>.parquet` holds the same rows.

Instants are UTC (`Datetime("us", "UTC")`); every local-time question is answered in SQL with
the row's IANA `zone` (`timezone(zone, start)` in DuckDB), never with a stored offset.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

import duckdb
import polars as pl

UTC_TS: Final = pl.Datetime("us", "UTC")

# run kinds: simulate-engine, simulate-service, demo, burst, sustained, contention, dst.
# strategies: holds (hold + advisory lock + constraint: the service as shipped), pessimistic
# (lock first, no holds), constraint (the exclusion constraint alone), engine (in-process).
# outcomes: ok, conflict, capacity, no_slot, rejected (4xx other than a conflict), expired,
# error (5xx, transport failure, no answer).
# conflict layers (which of the three layers refused a conflict): hold, lock, constraint.
TABLES: Final[dict[str, dict[str, pl.DataType]]] = {
    # One row per run. `params` and `summary` are JSON objects, written with sorted keys.
    "runs": {
        "run_id": pl.String(),
        "kind": pl.String(),
        "seed": pl.Int64(),
        "started_at": UTC_TS,
        "params": pl.String(),
        "summary": pl.String(),
    },
    # Resources of the simulated tenants: the denominators of utilization.
    "resources": {
        "run_id": pl.String(),
        "tenant": pl.String(),
        "resource_id": pl.String(),
        "name": pl.String(),
        "kind": pl.String(),  # staff | room | equipment
        "zone": pl.String(),
        "skills": pl.List(pl.String()),
        "daily_capacity": pl.Int64(),  # appointments per local day; null when unlimited
    },
    # Working time per resource over the simulated period (UTC intervals, already expanded).
    "working": {
        "run_id": pl.String(),
        "tenant": pl.String(),
        "resource_id": pl.String(),
        "zone": pl.String(),
        "start": UTC_TS,
        "end": UTC_TS,
    },
    # One row per attempted operation of a customer (or a load-test user).
    "attempts": {
        "run_id": pl.String(),
        "seq": pl.Int64(),  # order within the run
        "tenant": pl.String(),
        "customer": pl.String(),
        "service": pl.String(),
        "strategy": pl.String(),
        # availability | hold | confirm | abandon | cancel | reschedule | no_show
        "action": pl.String(),
        "at": UTC_TS,  # when it happened: virtual time in engine mode, wall time over HTTP
        "requested_start": UTC_TS,  # the customer's preferred start (null if none)
        "slot_start": UTC_TS,  # the start held / booked / cancelled (null if none)
        "slot_end": UTC_TS,
        "zone": pl.String(),  # the tenant's zone, for local-time views
        "resource_ids": pl.List(pl.String()),
        "hold_id": pl.String(),  # links a hold to its confirm / abandon / expiry
        "booking_id": pl.String(),
        "outcome": pl.String(),
        "conflict_layer": pl.String(),  # set when outcome is conflict
        "reason": pl.String(),  # machine reason (e.g. capacity_reached, held, lead_time)
        "status": pl.Int64(),  # HTTP status over HTTP; null in engine mode
        "latency_ms": pl.Float64(),  # null in engine mode (virtual time has no latency)
    },
    # Bookings as they stand at the end of a run, one row per booked resource.
    "bookings": {
        "run_id": pl.String(),
        "tenant": pl.String(),
        "booking_id": pl.String(),
        "resource_id": pl.String(),
        "zone": pl.String(),  # the resource's zone
        "start": UTC_TS,
        "end": UTC_TS,
        "status": pl.String(),  # active | cancelled
    },
    # Load tests: one row per HTTP request as the client saw it.
    "requests": {
        "run_id": pl.String(),
        "strategy": pl.String(),
        "name": pl.String(),  # endpoint name, e.g. hold, confirm, availability, noop
        "t_s": pl.Float64(),  # seconds since the run started
        "status": pl.Int64(),  # 0 when no answer came
        "outcome": pl.String(),
        "latency_ms": pl.Float64(),
    },
    # Contention study: one row per strategy, figures read from PostgreSQL itself.
    "contention": {
        "run_id": pl.String(),
        "strategy": pl.String(),
        "attempts": pl.Int64(),
        "confirmed": pl.Int64(),
        "db_transactions": pl.Int64(),  # xact_commit + xact_rollback
        "db_rollbacks": pl.Int64(),
        "lock_waits": pl.Int64(),
        "deadlocks": pl.Int64(),
        "constraint_violations": pl.Int64(),
        "transactions_per_success": pl.Float64(),
        "lock_wait_s": pl.Float64(),  # backend-seconds waiting for a lock (sampled)
        "db_collisions": pl.Int64(),  # lock_waits + db_rollbacks: the study's measure
        "p50_ms": pl.Float64(),
        "p99_ms": pl.Float64(),
        "reduction_vs_pessimistic": pl.Float64(),  # 1 - db_collisions / pessimistic's
    },
    # DST sweep: one row per zone, one per transition, one per anomaly found.
    "dst_zones": {
        "run_id": pl.String(),
        "zone": pl.String(),
        "transitions": pl.Int64(),
        "instances": pl.Int64(),
        "violations": pl.Int64(),
    },
    "dst_transitions": {
        "run_id": pl.String(),
        "zone": pl.String(),
        "at": UTC_TS,
        "offset_before_s": pl.Int64(),
        "offset_after_s": pl.Int64(),
        "kind": pl.String(),  # gap | fold | offset (a change with no wall-clock overlap/gap)
    },
    "dst_anomalies": {
        "run_id": pl.String(),
        "zone": pl.String(),
        "transition_at": UTC_TS,
        "series_local_start": pl.String(),  # ISO local wall time of the series' first instance
        "check": pl.String(),  # wall_time | policy | lost | duplicated | duration
        "detail": pl.String(),
    },
}

DATABASE_FILE: Final = "slotwise.duckdb"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def default_data_dir() -> Path:
    """`<data folder>/workbench`: beside the embedded servers (`SLOTWISE_DATA_DIR`, else ./var)."""
    from service.settings import load_settings

    return load_settings().data_dir / "workbench"


def frame(table: str, rows: list[dict[str, object]] | pl.DataFrame) -> pl.DataFrame:
    """Rows as a frame of exactly `table`'s columns and types (missing columns are null)."""
    schema = TABLES[table]
    df = rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows, infer_schema_length=None)
    unknown = set(df.columns) - set(schema)
    if unknown:
        raise ValueError(f"{table}: unknown columns {sorted(unknown)}")
    return df.select(
        [
            pl.col(name).cast(dtype) if name in df.columns else pl.lit(None, dtype).alias(name)
            for name, dtype in schema.items()
        ]
    )


class EventStore:
    """Parquet files plus one DuckDB database under a data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.database = data_dir / DATABASE_FILE

    def write(self, run_id: str, tables: dict[str, pl.DataFrame]) -> None:
        """Replace `run_id`'s rows in each given table, in Parquet and in DuckDB at once."""
        if not _RUN_ID.fullmatch(run_id):
            raise ValueError(f"run_id {run_id!r}: letters, digits, '.', '_' or '-' only")
        files = {}
        for table, df in tables.items():
            checked = frame(table, df)
            if checked.height and checked["run_id"].unique().to_list() != [run_id]:
                raise ValueError(f"{table}: every row must carry run_id {run_id!r}")
            path = self.data_dir / "parquet" / table / f"{run_id}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            checked.write_parquet(path)
            files[table] = path
        with duckdb.connect(str(self.database)) as con:
            create_tables(con)
            con.begin()
            for table, path in files.items():
                con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
                con.execute(
                    f"INSERT INTO {table} BY NAME SELECT * FROM read_parquet(?)", [str(path)]
                )
            con.commit()


def create_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create every table of `TABLES` that is missing (the readers' schema, even when empty),
    and add the columns a file written by an older schema lacks (its rows read NULL there)."""
    for table, schema in TABLES.items():
        empty = pl.DataFrame(schema=schema)  # noqa: F841 - read by DuckDB's replacement scan
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} AS SELECT * FROM empty LIMIT 0")
        present = {row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()}
        for name, sql_type, *_ in con.execute("DESCRIBE SELECT * FROM empty").fetchall():
            if name not in present:
                con.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {sql_type}')
