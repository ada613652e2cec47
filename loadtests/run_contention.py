"""`slotwise loadtest contention`: one hot-slot burst per booking strategy, contention measured
by PostgreSQL itself.

The claim under test: tentative holds cut database contention by 90%+ against pessimistic
locking. The same workload (same seed: same users, same targets, most on a few hot slots,
released together after a barrier) runs against a fresh server of each strategy on one
PostgreSQL + Valkey pair, each strategy on a tenant of its own:

- holds: hold (Valkey) + advisory lock + constraint, the service as shipped;
- pessimistic: no holds; confirmation locks the resources' rows `SELECT ... FOR UPDATE`;
- constraint: no holds, no lock; the exclusion constraint refuses the losers.

Figures, all deltas over the burst (from just before the barrier opens until the server has
stopped, so every backend has flushed its statistics):
- `db_transactions`, `db_rollbacks`, `deadlocks`: `pg_stat_database` of the service's
  database (the sampler and the snapshots run from the `postgres` database, so they are not
  counted);
- `lock_waits`: distinct heavyweight-lock waits seen in `pg_locks` (not granted, by backend and
  `waitstart`), sampled every `SAMPLE_S`; waits shorter than that can be missed;
- `lock_wait_s`: backend-seconds spent waiting for a lock, the sampled integral of the number
  of waiting backends (an unbiased estimate, short waits included on average);
- `constraint_violations`: 409 answers whose problem says the exclusion constraint refused
  the insert (`why.layer == "constraint"`): violations that reached the database;
- `transactions_per_success`: `db_transactions / confirmed`;
- `p50_ms`, `p99_ms`: attempt latency (hold + confirm) as the clients saw it;
- `db_collisions`: `lock_waits + db_rollbacks`, transactions that collided with another one
  inside the database, by waiting for its lock or by losing to it and rolling back (a refusal
  under the lock, or an exclusion violation). Waiting alone is not the measure: the
  constraint-only strategy hardly waits, it rolls back instead;
- `reduction_vs_pessimistic`: `1 - db_collisions(strategy) / db_collisions(pessimistic)`; the
  same ratio for the other figures is under `reductions`.
"""

from __future__ import annotations

import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import polars as pl
import psycopg

from loadtests import verifier
from loadtests.run_burst import BurstParams, BurstResult, frames, launch, verify
from loadtests.runner import infrastructure, run_id, served

STRATEGIES = ("holds", "pessimistic", "constraint")
SAMPLE_S = 0.005
CONTENTION_METRIC = "db_collisions"

STATS_SQL = """
SELECT xact_commit, xact_rollback, deadlocks, conflicts
  FROM pg_stat_database WHERE datname = %s
"""
WAITING_SQL = """
SELECT l.pid, l.locktype, l.waitstart
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE NOT l.granted AND a.datname = %s
"""


class LockSampler:
    """Samples `pg_locks` for waiting backends of one database, on a thread of its own."""

    def __init__(self, stats_url: str, database: str) -> None:
        self.stats_url = stats_url
        self.database = database
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.waits: set[tuple[int, datetime]] = set()
        self.by_type: dict[str, set[tuple[int, datetime]]] = {}
        self.wait_s = 0.0
        self.samples = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with psycopg.connect(self.stats_url, autocommit=True) as conn:
            last = time.perf_counter()
            while not self._stop.is_set():
                rows = conn.execute(WAITING_SQL, (self.database,)).fetchall()
                now = time.perf_counter()
                self.wait_s += len(rows) * (now - last)
                last = now
                self.samples += 1
                for pid, locktype, waitstart in rows:
                    if waitstart is not None:  # null for an instant after a wait begins
                        self.waits.add((pid, waitstart))
                        self.by_type.setdefault(locktype, set()).add((pid, waitstart))
                self._stop.wait(SAMPLE_S)


def _stats(stats_url: str, database: str) -> dict[str, int]:
    with psycopg.connect(stats_url, autocommit=True) as conn:
        row = conn.execute(STATS_SQL, (database,)).fetchone()
    assert row is not None, f"no statistics for database {database}"
    return dict(zip(("commit", "rollback", "deadlocks", "conflicts"), map(int, row), strict=True))


@dataclass(frozen=True, slots=True)
class ContentionParams:
    attempts: int = 3000
    hot_slots: int = 10
    hot_share: float = 0.9
    seed: int = 1
    processes: int = 2
    workers: int = 2
    backlog: int = 4096
    timeout_s: float = 300.0


def run(
    params: ContentionParams,
    *,
    strategies: tuple[str, ...] = STRATEGIES,
    data_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """One line per strategy; pessimistic goes first so the others can be compared with it."""
    order = sorted(strategies, key=lambda s: s != "pessimistic")
    started = datetime.now(UTC)
    run = run_id("contention", started)
    lines: list[dict[str, Any]] = []
    tables: dict[str, list[pl.DataFrame]] = {"requests": [], "attempts": []}
    with (
        infrastructure(None, None) as endpoints,
        tempfile.TemporaryDirectory(prefix="slotwise-contention-") as work,
    ):
        database = urlsplit(endpoints.admin_url).path.lstrip("/")
        stats_url = urlsplit(endpoints.admin_url)._replace(path="/postgres").geturl()
        for index, strategy in enumerate(order):
            burst = BurstParams(
                attempts=params.attempts,
                hot_slots=params.hot_slots,
                hot_share=params.hot_share,
                seed=params.seed,
                processes=params.processes,
                workers=params.workers,
                backlog=params.backlog,
                noop=False,
                # No warm-up: a backend reports its statistics up to 10 s after it goes idle,
                # so the warm-up's transactions would be counted in the burst's.
                warm_up=0,
                timeout_s=params.timeout_s,
                strategy=strategy,
            )
            sampler = LockSampler(stats_url, database)
            result, delta = _measure(endpoints, burst, run, Path(work) / strategy, sampler)
            lines.append(_line(strategy, result, delta, sampler, lines))
            for table, frame in frames(run, strategy, result, index * params.attempts).items():
                tables[table].append(frame)
    contention = pl.DataFrame(
        [{k: line.get(k) for k in _CONTENTION_COLUMNS} | {"run_id": run} for line in lines]
    )
    verifier.store(
        data_dir,
        run,
        {
            "runs": verifier.run_frame(
                run, "contention", params.seed, started, _params(params), {"lines": lines}
            ),
            "contention": contention,
            **{table: pl.concat(parts, how="diagonal_relaxed") for table, parts in tables.items()},
        },
    )
    return lines


def _measure(
    endpoints: Any, burst: BurstParams, run: str, work: Path, sampler: LockSampler
) -> tuple[BurstResult, dict[str, int]]:
    """One strategy's burst on a server of its own; the statistics' change over the burst."""
    before: dict[str, int] = {}

    def opening(_barrier: str) -> None:
        before.update(_stats(sampler.stats_url, sampler.database))
        sampler.start()

    server = served(
        endpoints, workers=burst.workers, backlog=burst.backlog, strategy=burst.strategy
    )
    with server as target:
        scenario, done = launch(target, burst, run, work, on_release=opening)
        sampler.stop()
    # The server has stopped: its backends exited and flushed their statistics.
    after = _stats(sampler.stats_url, sampler.database)
    delta = {key: after[key] - before.get(key, after[key]) for key in after}
    return verify(endpoints.admin_url, burst, scenario, done), delta


_CONTENTION_COLUMNS = (
    "strategy",
    "attempts",
    "confirmed",
    "db_transactions",
    "db_rollbacks",
    "lock_waits",
    "deadlocks",
    "constraint_violations",
    "transactions_per_success",
    "lock_wait_s",
    "db_collisions",
    "p50_ms",
    "p99_ms",
    "reduction_vs_pessimistic",
)
_REDUCED = (
    "db_collisions",
    "lock_wait_s",
    "lock_waits",
    "db_rollbacks",
    "db_transactions",
    "transactions_per_success",
)


def _line(
    strategy: str,
    result: BurstResult,
    delta: dict[str, int],
    sampler: LockSampler,
    earlier: list[dict[str, Any]],
) -> dict[str, Any]:
    summary = result.summary
    layers = {"hold": 0, "lock": 0, "constraint": 0}
    for attempt in result.attempts:
        if attempt.layer is not None:
            layers[attempt.layer] += 1
    transactions = delta["commit"] + delta["rollback"]
    confirmed = int(summary["confirmed"])
    line: dict[str, Any] = {
        "bench": "contention",
        "strategy": strategy,
        "attempts": summary["attempts"],
        "answered": summary["answered"],
        "confirmed": confirmed,
        "conflicts": summary["conflicts"],
        "errors": summary["errors"],
        "conflicts_by_layer": layers,
        "db_transactions": transactions,
        "db_rollbacks": delta["rollback"],
        "deadlocks": delta["deadlocks"],
        "lock_waits": len(sampler.waits),
        "lock_waits_by_type": {k: len(v) for k, v in sorted(sampler.by_type.items())},
        "lock_wait_s": round(sampler.wait_s, 3),
        "lock_samples": sampler.samples,
        "db_collisions": len(sampler.waits) + delta["rollback"],
        "constraint_violations": layers["constraint"],
        "transactions_per_success": round(transactions / confirmed, 3) if confirmed else None,
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "wall_s": summary["wall_s"],
        "double_bookings": summary["double_bookings"],
        "lost_acks": summary["lost_acks"],
        "hot_slot_violations": summary["hot_slot_violations"],
        "unacknowledged": summary["unacknowledged"],
        **({"examples": summary["examples"]} if "examples" in summary else {}),
        "contention_metric": CONTENTION_METRIC,
    }
    pessimistic = next((e for e in earlier if e["strategy"] == "pessimistic"), None)
    if strategy == "pessimistic":
        pessimistic = line
    reductions = {
        key: _reduction(line.get(key), pessimistic.get(key) if pessimistic else None)
        for key in _REDUCED
    }
    line["reduction_vs_pessimistic"] = reductions.get(CONTENTION_METRIC)
    line["reductions"] = reductions
    return line


def _reduction(value: Any, baseline: Any) -> float | None:
    """1 - value / baseline; None when the baseline is zero or missing."""
    if value is None or not baseline:
        return None
    return round(1 - float(value) / float(baseline), 4)


def _params(params: ContentionParams) -> dict[str, Any]:
    return {
        "attempts": params.attempts,
        "hot_slots": params.hot_slots,
        "hot_share": params.hot_share,
        "processes": params.processes,
        "workers": params.workers,
        "sample_s": SAMPLE_S,
        "metric": CONTENTION_METRIC,
    }
