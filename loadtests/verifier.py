"""After every load-test run: what the clients saw, checked against what PostgreSQL holds.

- lost acks: every booking a client got a 201 for is a row in `bookings` (and still confirmed,
  unless that client asked to cancel it);
- double bookings: no two active bookings overlap on any resource, over the whole database;
- hot slots: each hot (resource, start) has at most one active booking;
- answered: every attempt got an HTTP answer (status 0 means none came).

The database is read with the superuser URL, so Row Level Security hides nothing. Results go
to the workbench event store (`simulation.events`): tables `runs`, `requests`, `attempts`.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import psycopg

EXAMPLES = 10  # finds named per check (all are counted)

# Each check returns its count and the first EXAMPLES of what it found, as text, so that a
# broken invariant says which bookings broke it. The count and the examples read the same rows
# twice rather than keep them (NOT MATERIALIZED): a slot booked a thousand times over makes
# half a million pairs, which the count streams and the examples' LIMIT sorts ten at a time.
# Pairs of active footprints overlapping on one resource: what the exclusion constraint forbids.
OVERLAPS_SQL = """
WITH pairs AS NOT MATERIALIZED (
    SELECT a.resource_id, a.booking_id AS first, b.booking_id AS second
      FROM booking_resources a JOIN booking_resources b
        ON a.resource_id = b.resource_id AND a.booking_id < b.booking_id AND a.during && b.during
     WHERE a.active AND b.active)
SELECT (SELECT count(*) FROM pairs),
       ARRAY(SELECT format('%%s: %%s & %%s', resource_id, first, second) FROM pairs
              ORDER BY resource_id, first, second LIMIT %(examples)s)
"""
# Acknowledged ids with no booking row, or whose booking is no longer confirmed although its
# client never asked to cancel it.
LOST_ACKS_SQL = """
WITH lost AS NOT MATERIALIZED (
    SELECT seen.id FROM unnest(%(acked)s::uuid[]) AS seen(id)
     WHERE NOT EXISTS (
         SELECT 1 FROM bookings b
          WHERE b.id = seen.id AND (b.status = 'confirmed' OR b.id = ANY(%(cancelled)s::uuid[]))))
SELECT (SELECT count(*) FROM lost),
       ARRAY(SELECT id::text FROM lost ORDER BY id LIMIT %(examples)s)
"""
# Hot slots with more than one active booking, each named as the run gave it.
# Its example names the slot, how many bookings it has and the first two of them.
HOT_SLOTS_SQL = """
WITH doubled AS NOT MATERIALIZED (
    SELECT h.resource_id, h.start, count(*) AS n, (array_agg(b.id ORDER BY b.id))[1:2] AS ids
      FROM unnest(%(resources)s::uuid[], %(starts)s::text[]) AS h(resource_id, start)
      JOIN booking_resources br ON br.resource_id = h.resource_id AND br.active
      JOIN bookings b ON b.id = br.booking_id AND b.starts_at = h.start::timestamptz
     GROUP BY 1, 2 HAVING count(*) > 1)
SELECT (SELECT count(*) FROM doubled),
       ARRAY(SELECT format('%%s at %%s: %%s bookings, %%s & %%s', resource_id, start, n, ids[1],
                           ids[2])
               FROM doubled ORDER BY resource_id, start LIMIT %(examples)s)
"""
# Confirmed bookings of the tenant that no client was told about (e.g. an answer lost).
UNACKNOWLEDGED_SQL = """
WITH untold AS NOT MATERIALIZED (
    SELECT id FROM bookings
     WHERE tenant_id = %(tenant)s AND status = 'confirmed' AND NOT id = ANY(%(acked)s::uuid[]))
SELECT (SELECT count(*) FROM untold),
       ARRAY(SELECT id::text FROM untold ORDER BY id LIMIT %(examples)s)
"""


@dataclass(frozen=True, slots=True)
class Checks:
    """The database's side of a run; the invariants hold when the first three are zero.
    `examples`: for each check that found something, the first `EXAMPLES` of what it found."""

    double_bookings: int
    lost_acks: int
    hot_slot_violations: int
    unacknowledged: int
    examples: Mapping[str, list[str]] = field(default_factory=dict, hash=False)

    def summary_examples(self) -> dict[str, Any]:
        """`{"examples": ...}` for a run's summary if a check found anything, else nothing."""
        return {"examples": {k: list(v) for k, v in self.examples.items()}} if self.examples else {}


def check_database(
    admin_url: str,
    tenant_id: str,
    acked: Iterable[str],
    cancelled: Iterable[str] = (),
    hot: Sequence[tuple[str, str]] = (),
) -> Checks:
    """Run the SQL checks. `acked`: booking ids clients got a 201 for; `cancelled`: ids clients
    asked to cancel and the server may have cancelled (answered 200, or the answer unknown);
    `hot`: (resource id, start ISO) of the hot slots."""
    acked, cancelled = sorted(set(acked)), sorted(set(cancelled))
    checks: dict[str, tuple[str, dict[str, Any]]] = {
        "double_bookings": (OVERLAPS_SQL, {}),
        "lost_acks": (LOST_ACKS_SQL, {"acked": acked, "cancelled": cancelled}),
        "hot_slot_violations": (
            HOT_SLOTS_SQL,
            {"resources": [r for r, _ in hot], "starts": [s for _, s in hot]},
        ),
        "unacknowledged": (UNACKNOWLEDGED_SQL, {"tenant": tenant_id, "acked": acked}),
    }
    counts: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    with psycopg.connect(admin_url) as conn:
        for name, (sql, params) in checks.items():
            row = conn.execute(sql, {**params, "examples": EXAMPLES}).fetchone()
            found, named = row if row is not None else (0, None)
            counts[name] = int(found)
            if found:
                examples[name] = list(named)
    return Checks(**counts, examples=examples)


# --- what the clients saw --------------------------------------------------------------------
def outcome(row: Mapping[str, Any]) -> str:
    """A request's outcome in the event store's vocabulary."""
    status, problem = int(row["status"]), row.get("problem")
    if status == 0 or status >= 500:
        return "error"
    if status < 400:
        return "ok"
    if problem == "capacity-exceeded":
        return "capacity"
    if status == 409:
        return "conflict"
    if status == 410:
        return "expired"
    if problem == "slot-unavailable":
        return "no_slot"
    return "rejected"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One user's booking attempt (hold, then confirm if held) as the client saw it."""

    user: int
    action: str  # the last request: hold | confirm
    outcome: str  # confirmed | conflict | error | unanswered
    layer: str | None  # which layer refused a conflict: hold | lock | constraint
    status: int  # of the last request
    booking_id: str | None
    latency_ms: float  # hold + confirm
    at: float  # when the hold was sent (epoch s)


def attempts(rows: Iterable[Mapping[str, Any]], users: int, phase: str = "book") -> list[Attempt]:
    """Every user's attempt in `phase`, in user order; a user without rows is unanswered."""
    by_user: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["phase"] == phase:
            by_user[int(row["user"])].append(row)
    out = []
    for user in range(users):
        mine = sorted(by_user.get(user, []), key=lambda r: float(r["at"]))
        out.append(_attempt(user, mine))
    return out


def _attempt(user: int, rows: Sequence[Mapping[str, Any]]) -> Attempt:
    if not rows:
        return Attempt(user, "hold", "unanswered", None, 0, None, 0.0, 0.0)
    last = rows[-1]
    action = str(last["name"])
    status = int(last["status"])
    latency = sum(float(r["latency_ms"]) for r in rows)
    at = float(rows[0]["at"])
    held_but_unconfirmed = last["name"] == "hold" and status == 201
    if status == 0 or held_but_unconfirmed:
        return Attempt(user, action, "unanswered", None, status, None, latency, at)
    if status == 201:
        return Attempt(user, action, "confirmed", None, status, last["booking_id"], latency, at)
    if outcome(last) == "conflict":
        layer = "hold" if last["name"] == "hold" else (last.get("layer") or "lock")
        return Attempt(user, action, "conflict", layer, status, None, latency, at)
    return Attempt(user, action, "error", None, status, None, latency, at)


def phase_wall(rows: Iterable[Mapping[str, Any]], phase: str, released: float) -> float:
    """Seconds from the barrier's release to the last answer of `phase`."""
    ends = [float(r["at"]) + float(r["latency_ms"]) / 1000 for r in rows if r["phase"] == phase]
    return max(ends, default=released) - released


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; 0.0 when empty."""
    if not values:
        return 0.0
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=1000, method="inclusive")[round(q * 1000) - 1])


def summarize(found: Sequence[Attempt]) -> dict[str, int]:
    """Counts of a run's attempts: answered means some HTTP answer ended the attempt."""
    counts = {"confirmed": 0, "conflict": 0, "error": 0, "unanswered": 0}
    for a in found:
        counts[a.outcome] += 1
    return {
        "attempts": len(found),
        "answered": len(found) - counts["unanswered"],
        "confirmed": counts["confirmed"],
        "conflicts": counts["conflict"],
        "errors": counts["error"] + counts["unanswered"],
    }


# --- to the event store -----------------------------------------------------------------------
def request_frame(
    run_id: str, strategy: str, rows: Iterable[Mapping[str, Any]], origin: float
) -> pl.DataFrame:
    """The `requests` table: every request, `t_s` counted from `origin` (the first release)."""
    return pl.DataFrame(
        [
            {
                "run_id": run_id,
                "strategy": strategy,
                "name": r["name"],
                "t_s": float(r["at"]) - origin,
                "status": int(r["status"]),
                "outcome": outcome(r),
                "latency_ms": float(r["latency_ms"]),
            }
            for r in rows
        ],
        infer_schema_length=None,
    )


def attempt_frame(
    run_id: str,
    strategy: str,
    found: Sequence[Attempt],
    tenant_id: str,
    service_id: str,
    targets: Sequence[tuple[str, str]],
    slot: timedelta,
    seq_offset: int = 0,
) -> pl.DataFrame:
    """The `attempts` table: one row per booking attempt (its final action and outcome)."""
    out = []
    for a in found:
        resource_id, start = targets[a.user]
        begin = datetime.fromisoformat(start)
        out.append(
            {
                "run_id": run_id,
                "seq": seq_offset + a.user,
                "tenant": tenant_id,
                "customer": f"user-{a.user}",
                "service": service_id,
                "strategy": strategy,
                "action": a.action,
                "at": datetime.fromtimestamp(a.at, UTC) if a.at else None,
                "requested_start": begin,
                "slot_start": begin,
                "slot_end": begin + slot,
                "zone": "UTC",
                "resource_ids": [resource_id],
                "booking_id": a.booking_id,
                "outcome": {"confirmed": "ok", "unanswered": "error"}.get(a.outcome, a.outcome),
                "conflict_layer": a.layer,
                "status": a.status,
                "latency_ms": a.latency_ms,
            }
        )
    return pl.DataFrame(out, infer_schema_length=None)


def run_frame(
    run_id: str,
    kind: str,
    seed: int,
    started_at: datetime,
    params: Mapping[str, Any],
    summary: Mapping[str, Any],
) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "run_id": run_id,
                "kind": kind,
                "seed": seed,
                "started_at": started_at,
                "params": json.dumps(params, sort_keys=True),
                "summary": json.dumps(summary, sort_keys=True),
            }
        ]
    )


def store(data_dir: Path | None, run_id: str, tables: dict[str, pl.DataFrame]) -> Path:
    """Write a run's tables through the event store; returns the DuckDB file."""
    from simulation.events import EventStore, default_data_dir

    events = EventStore(data_dir or default_data_dir())
    events.write(run_id, tables)
    return events.database
