"""`slotwise bench assign`: the waiting queue of a generated salon week, CP-SAT vs first fit.

Both solvers get the same 500-appointment queue (``engine.workload.generate_queue``) in the
same run. The CP-SAT result is then checked here, independently of the solver: replayed one
assignment at a time onto copies of the calendars, each must be what ``engine.slots.explain``
offers at its start with exactly its own resources pinned (qualified, inside working hours,
no overlap with existing busy time or earlier assignments on buffered footprints, daily
capacity left on the resource's local day, business rules) and lie inside its window.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from engine.assignment import (
    Assignment,
    QueuedAppointment,
    assign,
    booking_entry,
    greedy_assign,
)
from engine.calendar import ResourceCalendar
from engine.model import Rules
from engine.slots import Offered, explain
from engine.workload import generate_queue

APPOINTMENTS = 500


def problems(
    assigned: Sequence[Assignment],
    queue: Sequence[QueuedAppointment],
    calendars: Mapping[str, ResourceCalendar],
    now: datetime,
    rules: Rules,
) -> list[str]:
    """What is wrong with ``assigned`` as a whole; empty when it can all be booked."""
    by_id = {appointment.id: appointment for appointment in queue}
    # Copies hold the existing busy time, and so the existing daily load (generated calendars
    # count it from their busy entries, not from a ``loads`` aggregate); the caller's
    # calendars stay untouched.
    copies = {
        key: ResourceCalendar(cal.resource, cal.working_hours, cal.busy_entries())
        for key, cal in calendars.items()
    }
    by_resource = {cal.resource.id: cal for cal in copies.values()}
    found: list[str] = []
    seen: set[str] = set()
    for a in assigned:
        appointment = by_id.get(a.appointment_id)
        if appointment is None or a.appointment_id in seen:
            found.append(f"{a.appointment_id}: unknown or assigned twice")
            continue
        seen.add(a.appointment_id)
        if not appointment.earliest <= a.start <= appointment.latest:
            found.append(f"{a.appointment_id}: starts outside its window")
        service = appointment.service
        pinned = replace(
            service,
            requirements=tuple(
                replace(req, resource_ids=frozenset(rid for j, rid in a.resources if j == index))
                for index, req in enumerate(service.requirements)
            ),
        )
        verdict = explain(pinned, copies, a.start, now, rules)
        if not (isinstance(verdict, Offered) and tuple(sorted(verdict.assignment)) == a.resources):
            found.append(f"{a.appointment_id} at {a.start.isoformat()}: {verdict}")
            continue
        for _, rid in a.resources:
            by_resource[rid].add(booking_entry(appointment, a.start))
    return found


def run(seed: int = 1) -> dict[str, object]:
    work = generate_queue(seed, appointments=APPOINTMENTS)
    started = time.perf_counter()
    solved = assign(work.queue, work.calendars, work.now, work.rules)
    solve_s = time.perf_counter() - started
    started = time.perf_counter()
    greedy = greedy_assign(work.queue, work.calendars, work.now, work.rules)
    greedy_s = time.perf_counter() - started
    found = problems(solved.assigned, work.queue, work.calendars, work.now, work.rules)
    if found:
        raise AssertionError(f"CP-SAT result is invalid: {found[:5]} ({len(found)} problems)")
    reasons = Counter(type(u.reason).__name__ for u in solved.unassigned)
    return {
        "bench": "assign",
        "queued": len(work.queue),
        "assigned": solved.score.assigned,
        "solve_s": round(solve_s, 3),
        "greedy_assigned": greedy.score.assigned,
        "greedy_s": round(greedy_s, 3),
        "unassigned_reasons": dict(sorted(reasons.items())),
        "status": solved.status,
        "valid": True,
        "seed": seed,
    }
