"""`slotwise loadtest sustained`: mixed customer traffic over time, with a flash crowd, verified.

The shape comes from the simulator's demand model (`simulation.demand`): one business day's
hourly intensity (`DAILY`) compressed into the run, multiplied by `FLASH_FACTOR` during
`FLASH_HOURS`, when customers want the first days of the horizon. The behaviour shares
(browse only, abandon a hold, later cancel, patience after a conflict) are the ones
`simulation.demand.customers` draws with; they are inline there, so `BEHAVIOUR` repeats them
here, in this one place.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtests import verifier
from loadtests.runner import Target, first_day, infrastructure, run_id, run_locust, served, set_up

# As in simulation.demand.customers: 35% only browse (the locustfile's task weights), 15%
# abandon their hold, 8% later cancel, patience 0-2 retries after a refused hold.
BEHAVIOUR = {"abandon": 0.15, "cancel": 0.08, "patience": [0, 1, 1, 2, 2, 2], "think_s": [0.1, 0.6]}
HORIZON_DAYS = 14
FLASH_DAYS = 2  # the flash crowd wants today or tomorrow (lead 0-2 days in the demand model)


@dataclass(frozen=True, slots=True)
class SustainedParams:
    duration_s: float = 120.0
    base_users: int = 10  # users at the day's mean intensity
    seed: int = 1
    processes: int = 2
    workers: int = 2
    backlog: int = 4096


def stages(duration_s: float, base_users: int) -> list[dict[str, Any]]:
    """One stage per hour of the demand model's day, compressed into `duration_s`."""
    from simulation.demand import DAILY, FLASH_FACTOR, FLASH_HOURS

    hour_s = duration_s / len(DAILY)
    out = []
    for hour, intensity in enumerate(DAILY):
        flash = hour in FLASH_HOURS
        users = max(1, round(base_users * float(intensity) * (FLASH_FACTOR if flash else 1.0)))
        out.append({"until_s": round((hour + 1) * hour_s, 3), "users": users, "flash": flash})
    return out


def run(
    params: SustainedParams,
    *,
    url: str | None = None,
    admin_key: str | None = None,
    database_url: str | None = None,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    """The sustained run against `url` or a server of its own; verified; returns a summary."""
    started = datetime.now(UTC)
    run = run_id("sustained", started)
    with contextlib.ExitStack() as stack:
        if url is not None:
            if not admin_key or not database_url:
                raise ValueError("--url needs the admin key and DATABASE_URL of that service")
            target = Target(url, database_url, admin_key)
        else:
            endpoints = stack.enter_context(infrastructure(None, None))
            target = stack.enter_context(
                served(endpoints, workers=params.workers, backlog=params.backlog)
            )
        scenario = set_up(target, users=0, hot_slots=0, hot_share=0.0, seed=params.seed)
        shape = stages(params.duration_s, params.base_users)
        plan = {
            "run_id": run,
            "users": max(s["users"] for s in shape),
            "seed": params.seed,
            "token": scenario.token,
            "service_id": scenario.service_id,
            "first_day": first_day(started).isoformat(),
            "horizon_days": HORIZON_DAYS,
            "flash_days": FLASH_DAYS,
            "behaviour": BEHAVIOUR,
            "stages": shape,
        }
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="slotwise-sust-")))
        done = run_locust(
            work,
            "sustained.py",
            target.base_url,
            plan,
            processes=params.processes,
            timeout_s=params.duration_s + 120,
            # A user the shape retires finishes its task first: killed mid-confirm, it would
            # leave a booking no client was told about.
            extra_args=["--run-time", f"{int(params.duration_s) + 60}s", "--stop-timeout", "30"],
        )
        acked = _booking_ids(done.rows, "confirm", {201})
        cancelled = _maybe_cancelled(done.rows)
        checks = verifier.check_database(target.admin_url, scenario.tenant_id, acked, cancelled)
    by_name: dict[str, dict[str, int]] = {}
    for row in done.rows:
        counts = by_name.setdefault(row["name"], {})
        kind = verifier.outcome(row)
        counts[kind] = counts.get(kind, 0) + 1
    latencies = [float(r["latency_ms"]) for r in done.rows if r["status"]]
    summary: dict[str, Any] = {
        "bench": "sustained",
        "requests": len(done.rows),
        "answered": sum(1 for r in done.rows if r["status"]),
        "errors": sum(1 for r in done.rows if verifier.outcome(r) == "error"),
        "confirmed": len(acked),
        "cancelled": len(set(_booking_ids(done.rows, "cancel", {200}))),
        "double_bookings": checks.double_bookings,
        "lost_acks": checks.lost_acks,
        "unacknowledged": checks.unacknowledged,
        **checks.summary_examples(),
        "peak_users": plan["users"],
        "duration_s": params.duration_s,
        "p50_ms": round(verifier.percentile(latencies, 0.5), 1),
        "p99_ms": round(verifier.percentile(latencies, 0.99), 1),
        "outcomes": by_name,
    }
    origin = min((float(r["at"]) for r in done.rows), default=0.0)
    about = {"duration_s": params.duration_s, "base_users": params.base_users, "url": url}
    verifier.store(
        data_dir,
        run,
        {
            "runs": verifier.run_frame(run, "sustained", params.seed, started, about, summary),
            "requests": verifier.request_frame(run, "holds", done.rows, origin),
        },
    )
    return summary


def _booking_ids(rows: list[dict[str, Any]], name: str, statuses: set[int]) -> list[str]:
    """The bookings the `name` requests answered with one of `statuses` were about."""
    return [
        r["booking_id"]
        for r in rows
        if r["name"] == name and r["status"] in statuses and r["booking_id"]
    ]


def _maybe_cancelled(rows: list[dict[str, Any]]) -> list[str]:
    """Bookings a client asked to cancel that the server may have cancelled: answered 200,
    or not known, with no answer (status 0: the user stopped waiting) or a 5xx. A 4xx refused
    the cancellation: a booking cancelled all the same is a lost acknowledgement."""
    unknown = {0} | set(range(500, 600))
    return _booking_ids(rows, "cancel", {200} | unknown)
