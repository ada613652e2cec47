"""`slotwise simulate`: synthetic demand replayed through the engine (or the live service),
written to the event store, summarised with Polars.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from simulation.demand import period
from simulation.events import EventStore, frame
from simulation.tables import double_bookings, dumps, merge_attempts, period_bounds, summarize

# A Monday; its month crosses the northern spring-forward and (with the booking horizon) the
# southern fall-back. Engine runs are in virtual time, so a fixed date keeps them reproducible.
DEFAULT_START = date(2027, 3, 1)


def run_id_for(kind: str, seed: int, tenants: int, days: int) -> str:
    """Deterministic: rerunning the same command replaces the same run's rows."""
    return f"{kind}-s{seed}-t{tenants}-d{days}"


def run_engine(
    seed: int,
    tenants: int,
    days: int,
    *,
    start: date = DEFAULT_START,
    data_dir: Path,
    workers: int = 1,
    run_id: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Replay ``tenants`` tenants' demand over ``days`` days through the engine; write the run.

    Returns the benchmark record: attempts replayed and attempts per second of the replay
    (demand drawing included, writing excluded), plus the summary.
    """
    from simulation.replay import simulate

    run_id = run_id or run_id_for("simulate-engine", seed, tenants, days)
    started_at = datetime.now(UTC)
    p = period(seed, start, days)
    clock = time.perf_counter()
    results = list(simulate(seed, tenants, p, run_id, workers=workers, progress=progress))
    attempts = merge_attempts([r.attempts for r in results], run_id)
    replay_s = time.perf_counter() - clock
    bookings = frame("bookings", pl.concat([r.bookings for r in results]))
    resources = frame("resources", pl.concat([r.resources for r in results]))
    working = frame("working", pl.concat([r.working for r in results]))
    specs = [r.spec for r in results]
    summary = summarize(attempts, bookings, working, period_bounds(specs, p))
    params = {
        "tenants": tenants,
        "days": days,
        "start": start.isoformat(),
        "mode": "engine",
        "flash_day": (p.start + timedelta(days=p.flash_day)).isoformat(),
    }
    store = EventStore(data_dir)
    tables = {
        "attempts": attempts,
        "bookings": bookings,
        "resources": resources,
        "working": working,
        "runs": runs_row(run_id, "simulate-engine", seed, started_at, params, summary),
    }
    store.write(run_id, tables)
    summary["double_bookings"] = double_bookings(str(store.database), run_id)
    store.write(
        run_id, {"runs": runs_row(run_id, "simulate-engine", seed, started_at, params, summary)}
    )
    return {
        "bench": "simulate",
        "attempts": attempts.height,
        "attempts_per_s": round(attempts.height / replay_s, 1),
        "replay_s": round(replay_s, 2),
        "mode": "engine",
        "workers": workers,
        "run_id": run_id,
        "database": str(store.database),
        **{
            k: summary[k]
            for k in (
                "bookings_active",
                "conflicts_prevented",
                "utilization_in_period",
                "double_bookings",
            )
        },
    }


def runs_row(
    run_id: str,
    kind: str,
    seed: int,
    started_at: datetime,
    params: dict[str, Any],
    summary: dict[str, Any],
) -> pl.DataFrame:
    return frame(
        "runs",
        [
            {
                "run_id": run_id,
                "kind": kind,
                "seed": seed,
                "started_at": started_at,
                "params": dumps(params),
                "summary": dumps(summary),
            }
        ],
    )


def loads(text: str) -> dict[str, Any]:
    value = json.loads(text)
    assert isinstance(value, dict)
    return value
