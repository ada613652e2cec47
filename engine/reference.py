"""Brute-force slot reference: the obvious algorithm, kept for tests and benchmarks.

It walks every grid start, checks every candidate resource by linear scans over plain lists
(working intervals, busy entries, bookings per day), and tries every combination of distinct
resources. It shares only the grid definition with ``engine.slots``; it must agree with
``availability`` exactly, only much more slowly.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from itertools import combinations, product

from engine.calendar import ResourceCalendar, instant
from engine.intervals import Interval, merge
from engine.model import BusyKind, Rules, Service
from engine.slots import Slot, grid
from engine.timezones import local_date


def availability_bruteforce(
    service: Service,
    calendars: Mapping[str, ResourceCalendar],
    window: Interval,
    now: datetime,
    rules: Rules,
) -> list[Slot]:
    starts = [instant(s) for s in grid(window, service.step, rules.zone)]
    if not starts:
        return []
    span = Interval(service.footprint(starts[0]).start, service.footprint(starts[-1]).end)
    minutes = int(service.duration.total_seconds() // 60)
    working = {
        rid: merge(o.interval for series in cal.working_hours for o in series.expand(span))
        for rid, cal in calendars.items()
    }
    busy = {rid: cal.busy_entries() for rid, cal in calendars.items()}
    booked_days = {
        rid: [
            (local_date(b.counted_start, cal.resource.zone), b.counted_minutes)
            for b in busy[rid]
            if b.kind is BusyKind.BOOKING
        ]
        for rid, cal in calendars.items()
    }

    def usable(rid: str, start: datetime) -> bool:
        footprint = service.footprint(start)
        if not any(w.contains(footprint) for w in working[rid]):
            return False
        if any(b.interval.overlaps(footprint) for b in busy[rid]):
            return False
        resource = calendars[rid].resource
        day = local_date(start, resource.zone)
        same_day = [m for d, m in booked_days[rid] if d == day]
        if resource.daily_capacity is not None and len(same_day) + 1 > resource.daily_capacity:
            return False
        return resource.daily_minutes is None or sum(same_day) + minutes <= resource.daily_minutes

    slots: list[Slot] = []
    for start in starts:
        if start < now + rules.min_lead:
            continue
        if rules.max_advance is not None and start > now + rules.max_advance:
            continue
        if local_date(start, rules.zone) in rules.blackout_dates:
            continue
        choices = [
            combinations(
                [
                    rid
                    for rid, cal in calendars.items()
                    if req.admits(cal.resource) and usable(rid, start)
                ],
                req.count,
            )
            for req in service.requirements
        ]
        for combo in product(*choices):
            chosen = [rid for group in combo for rid in group]
            if len(chosen) == len(set(chosen)):
                slots.append(Slot(start, start + service.duration))
                break
    return slots
