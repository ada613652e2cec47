"""`slotwise loadtest burst`: 10,000 booking attempts released at once, verified in SQL.

One Locust run, two barrier bursts over the same open connections: first every user calls
GET /healthz (the no-op baseline, `noop_wall_s`), then every user holds its target slot and
confirms it (`wall_s`). Both paths are warm when measured: the users' connect phase serves
/healthz first, and `warm_up` the booking path. Most targets are a few hot slots, so almost
every attempt is a conflict and exactly one per hot slot may win.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtests import verifier
from loadtests.runner import (
    SLOT,
    LocustRun,
    Scenario,
    Target,
    infrastructure,
    run_id,
    run_locust,
    served,
    set_up,
    warm_up,
)


@dataclass(frozen=True, slots=True)
class BurstParams:
    attempts: int = 10_000
    hot_slots: int = 20
    hot_share: float = 0.9  # the rest book a slot of their own
    seed: int = 1
    processes: int = 2  # Locust processes (one per core)
    workers: int = 2  # server workers, when the run starts its own server
    backlog: int = 4096
    noop: bool = True  # also run the no-op burst (the baseline)
    warm_up: int = 256  # bookings made first on a tenant of their own (`warm_up`); 0: none
    timeout_s: float = 600.0
    strategy: str = "holds"


@dataclass(frozen=True, slots=True)
class BurstResult:
    summary: dict[str, Any]
    scenario: Scenario
    attempts: list[verifier.Attempt]
    rows: list[dict[str, Any]]
    releases: dict[str, float]


def launch(
    target: Target, params: BurstParams, run: str, work_dir: Path, **locust: Any
) -> tuple[Scenario, LocustRun]:
    """Set the tenant up and run the Locust burst; extra keywords go to `run_locust`."""
    scenario = set_up(
        target,
        users=params.attempts,
        hot_slots=params.hot_slots,
        hot_share=params.hot_share,
        seed=params.seed,
    )
    if params.warm_up:
        warm_up(target, params.warm_up)
    phases = ["noop", "book"] if params.noop else ["book"]
    plan = {
        "run_id": run,
        "users": params.attempts,
        "phases": phases,
        "barriers": phases,
        "token": scenario.token,
        "service_id": scenario.service_id,
        "targets": scenario.targets,
    }
    done = run_locust(
        work_dir,
        "burst.py",
        target.base_url,
        plan,
        processes=params.processes,
        timeout_s=params.timeout_s,
        **locust,
    )
    return scenario, done


def verify(admin_url: str, params: BurstParams, scenario: Scenario, done: LocustRun) -> BurstResult:
    """The verifier's verdict on a finished burst, and its summary figures."""
    found = verifier.attempts(done.rows, params.attempts)
    acked = [a.booking_id for a in found if a.booking_id]
    checks = verifier.check_database(admin_url, scenario.tenant_id, acked, (), scenario.hot)
    latencies = [a.latency_ms for a in found if a.outcome != "unanswered"]
    summary: dict[str, Any] = {
        "bench": "burst",
        **verifier.summarize(found),
        "double_bookings": checks.double_bookings,
        "lost_acks": checks.lost_acks,
        "hot_slot_violations": checks.hot_slot_violations,
        "unacknowledged": checks.unacknowledged,
        **checks.summary_examples(),
        "wall_s": round(verifier.phase_wall(done.rows, "book", done.releases.get("book", 0)), 3),
    }
    if params.noop:
        noop_rows = [r for r in done.rows if r["phase"] == "noop"]
        summary["noop_wall_s"] = round(
            verifier.phase_wall(noop_rows, "noop", done.releases.get("noop", 0)), 3
        )
        summary["noop_answered"] = sum(1 for r in noop_rows if r["status"] == 200)
        summary["wall_ratio"] = round(summary["wall_s"] / max(summary["noop_wall_s"], 1e-9), 2)
    summary |= {
        "p50_ms": round(verifier.percentile(latencies, 0.5), 1),
        "p99_ms": round(verifier.percentile(latencies, 0.99), 1),
        "hot_slots": params.hot_slots,
        "locust_processes": params.processes,
    }
    return BurstResult(summary, scenario, found, done.rows, done.releases)


def run(
    params: BurstParams,
    *,
    url: str | None = None,
    admin_key: str | None = None,
    database_url: str | None = None,
    redis_url: str | None = None,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    """The burst against `url` (needs `admin_key` and `database_url`, the superuser URL of its
    database), else against a server of its own on throwaway (or the given) PostgreSQL and
    Valkey. The rows and summary go to the event store; returns the summary."""
    started = datetime.now(UTC)
    run = run_id("burst", started)
    with contextlib.ExitStack() as stack:
        if url is not None:
            if not admin_key or not database_url:
                raise ValueError("--url needs the admin key and DATABASE_URL of that service")
            target = Target(url, database_url, admin_key)
        else:
            endpoints = stack.enter_context(infrastructure(database_url, redis_url))
            target = stack.enter_context(
                served(
                    endpoints,
                    workers=params.workers,
                    backlog=params.backlog,
                    strategy=params.strategy,
                )
            )
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="slotwise-burst-")))
        scenario, done = launch(target, params, run, work)
        result = verify(target.admin_url, params, scenario, done)
    summary = result.summary | {"server_workers": params.workers if url is None else None}
    about = _params(params, url)
    tables = {"runs": verifier.run_frame(run, "burst", params.seed, started, about, summary)}
    tables |= frames(run, params.strategy, result)
    verifier.store(data_dir, run, tables)
    return summary


def frames(run: str, strategy: str, result: BurstResult, seq_offset: int = 0) -> dict[str, Any]:
    """The burst's `requests` and `attempts` tables (attempt `seq` from `seq_offset`)."""
    origin = min(result.releases.values(), default=0.0)
    scenario = result.scenario
    return {
        "requests": verifier.request_frame(run, strategy, result.rows, origin),
        "attempts": verifier.attempt_frame(
            run,
            strategy,
            result.attempts,
            scenario.tenant_id,
            scenario.service_id,
            scenario.targets,
            SLOT,
            seq_offset,
        ),
    }


def _params(params: BurstParams, url: str | None) -> dict[str, Any]:
    return {
        "attempts": params.attempts,
        "hot_slots": params.hot_slots,
        "hot_share": params.hot_share,
        "processes": params.processes,
        "workers": params.workers,
        "backlog": params.backlog,
        "warm_up": params.warm_up,
        "strategy": params.strategy,
        "url": url,
    }
