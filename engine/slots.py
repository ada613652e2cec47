"""Multi-resource slot calculation by constraint propagation, and "why not" for one start.

A start is offered only if some assignment of *distinct* resources meets every requirement,
each resource free over the service's buffered footprint, within its working hours and
its daily capacity. The search works on the slot grid as bitsets:

1. each candidate resource's feasible starts become one int bitmask (free spans from the
   interval index, shrunk by the footprint, minus full-capacity days);
2. a requirement's domain at a start is the set of its candidates whose bit is set;
3. requirements that share no candidate are independent: a start passes iff each one has
   enough candidates (popcount / OR of masks) — no per-start work at all;
4. requirements that do share candidates are decided per start by bipartite matching
   (Hall's condition), only on starts that survived the cheap filter.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from engine.calendar import ResourceCalendar, Span, day_span, instant, seconds
from engine.intervals import Interval
from engine.model import Busy, Requirement, Rules, Service
from engine.timezones import local_date


@dataclass(frozen=True, slots=True)
class Slot:
    start: datetime
    end: datetime


# --- verdicts for one start: a small union a caller can `match` on ---------------------------
@dataclass(frozen=True, slots=True)
class Offered:
    start: datetime
    end: datetime
    assignment: tuple[tuple[int, str], ...]  # (requirement index, resource id), one per unit


@dataclass(frozen=True, slots=True)
class LeadTime:
    earliest: datetime


@dataclass(frozen=True, slots=True)
class BeyondMaxAdvance:
    latest: datetime


@dataclass(frozen=True, slots=True)
class Blackout:
    day: date


@dataclass(frozen=True, slots=True)
class OffGrid:
    step: timedelta


@dataclass(frozen=True, slots=True)
class NoQualifiedResource:
    requirement: int
    detail: str


@dataclass(frozen=True, slots=True)
class OutsideHours:
    requirement: int
    resource_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Conflict:
    requirement: int
    conflicts: tuple[tuple[str, Busy], ...]  # (resource id, what it is busy with)


@dataclass(frozen=True, slots=True)
class CapacityReached:
    requirement: int
    resource_days: tuple[tuple[str, date], ...]


@dataclass(frozen=True, slots=True)
class NoJointAssignment:
    """Each requirement has free candidates, but not enough distinct ones for all at once."""

    requirements: tuple[int, ...]


Verdict = (
    Offered
    | LeadTime
    | BeyondMaxAdvance
    | Blackout
    | OffGrid
    | NoQualifiedResource
    | OutsideHours
    | Conflict
    | CapacityReached
    | NoJointAssignment
)


def candidates(
    service: Service, calendars: Mapping[str, ResourceCalendar]
) -> list[list[ResourceCalendar]]:
    """Per requirement, the calendars of resources it admits (kind, skills, pinned ids)."""
    return [
        [cal for cal in calendars.values() if req.admits(cal.resource)]
        for req in service.requirements
    ]


def grid(window: Interval, step: timedelta, zone_name: str) -> list[int]:
    """Candidate starts in ``window`` (POSIX seconds): every ``step`` from each local midnight
    of ``zone_name``, so a 15-minute grid reads :00/:15/:30/:45 on that zone's clocks."""
    lo, hi = seconds(window.start), seconds(window.end)
    step_s = int(step.total_seconds())
    day = local_date(window.start, zone_name)
    starts: list[int] = []
    while True:
        day_lo, day_hi = day_span(day, zone_name)
        if day_lo >= hi:
            return starts
        first = day_lo if day_lo >= lo else day_lo + -(-(lo - day_lo) // step_s) * step_s
        starts.extend(range(first, min(day_hi, hi), step_s))
        day += timedelta(days=1)


def rule_mask(starts: list[int], rules: Rules, now: datetime) -> int:
    """Grid positions allowed by lead time, max advance and blackout dates."""
    lo = bisect_left(starts, math.ceil((now + rules.min_lead).timestamp()))
    hi = len(starts)
    if rules.max_advance is not None:
        hi = bisect_right(starts, seconds(now + rules.max_advance))
    mask = range_bits(lo, hi)
    for day in rules.blackout_dates:
        a, b = day_span(day, rules.zone)
        mask &= ~range_bits(bisect_left(starts, a), bisect_left(starts, b))
    return mask


def range_bits(lo: int, hi: int) -> int:
    return ((1 << (hi - lo)) - 1) << lo if hi > lo else 0


MASK_MEMO_LIMIT = 2048  # per calendar; cleared whole when full


def footprint_shape(service: Service) -> tuple[int, int, int]:
    """(buffer before, duration + buffer after, duration minutes) in seconds and minutes."""
    return (
        int(service.buffer_before.total_seconds()),
        int((service.duration + service.buffer_after).total_seconds()),
        int(service.duration.total_seconds() // 60),
    )


def resource_mask(
    cal: ResourceCalendar,
    starts: Sequence[int],
    grid_key: Hashable,
    shape: tuple[int, int, int],
    span: Span,
) -> int:
    """Grid positions at which ``cal`` can take the whole buffered footprint (memoised on the
    calendar until its busy time changes: a day is asked about again and again). ``grid_key``
    names ``starts`` exactly and cheaply (what `grid` made it from), as the memo's key."""
    key = (grid_key, span, *shape)
    mask = cal.masks.get(key)
    if mask is not None:
        return mask
    before, after, minutes = shape
    mask = 0
    for a, b in cal.free_spans(span):
        mask |= range_bits(bisect_left(starts, a + before), bisect_right(starts, b - after))
    if mask:
        for day_lo, day_hi in cal.full_days(span, minutes):
            mask &= ~range_bits(bisect_left(starts, day_lo), bisect_left(starts, day_hi))
    if len(cal.masks) >= MASK_MEMO_LIMIT:
        cal.masks.clear()
    cal.masks[key] = mask
    return mask


def components(domains: Sequence[Sequence[ResourceCalendar]]) -> list[list[int]]:
    """Group requirement indexes that share at least one candidate (union-find)."""
    parent = list(range(len(domains)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for index, domain in enumerate(domains):
        for cal in domain:
            other = owner.setdefault(cal.resource.id, index)
            parent[find(index)] = find(other)
    groups: dict[int, list[int]] = {}
    for index in range(len(domains)):
        groups.setdefault(find(index), []).append(index)
    return list(groups.values())


def match(domains: Sequence[Sequence[str]], counts: Sequence[int]) -> list[tuple[int, str]] | None:
    """Distinct resources for every unit of every requirement (Kuhn's augmenting paths), or
    None when Hall's condition fails. Domains are tiny, so this is cheap."""
    units = [req for req, count in enumerate(counts) for _ in range(count)]
    holder: dict[str, int] = {}  # resource id -> unit index
    for unit in range(len(units)):
        if not _augment(unit, set(), domains, units, holder):
            return None
    return sorted((units[unit], rid) for rid, unit in holder.items())


def _augment(
    unit: int,
    seen: set[str],
    domains: Sequence[Sequence[str]],
    units: Sequence[int],
    holder: dict[str, int],
) -> bool:
    """Find ``unit`` a resource, moving earlier units along an augmenting path if need be.
    A module function rather than a closure in `match`: a closure that calls itself holds
    itself in a reference cycle, garbage that only the cyclic collector frees, and every call
    of `match` made one (the service's workers run that collector rarely: service/heap.py)."""
    for rid in domains[units[unit]]:
        if rid in seen:
            continue
        seen.add(rid)
        if rid not in holder or _augment(holder[rid], seen, domains, units, holder):
            holder[rid] = unit
            return True
    return False


def availability(
    service: Service,
    calendars: Mapping[str, ResourceCalendar],
    window: Interval,
    now: datetime,
    rules: Rules,
) -> list[Slot]:
    """Every grid start in ``window`` at which ``service`` can be booked."""
    duration = service.duration
    return [
        Slot(start, start + duration)
        for start in map(instant, available_starts(service, calendars, window, now, rules))
    ]


def available_starts(
    service: Service,
    calendars: Mapping[str, ResourceCalendar],
    window: Interval,
    now: datetime,
    rules: Rules,
) -> list[int]:
    """`availability` as POSIX seconds, for callers that only compare starts."""
    starts = grid(window, service.step, rules.zone)
    if not starts:
        return []
    allowed = rule_mask(starts, rules, now)
    domains = candidates(service, calendars)
    shape = footprint_shape(service)
    span = (starts[0] - shape[0], starts[-1] + shape[1])
    # The grid is a function of these: a key far cheaper to hash than every start.
    grid_key = (seconds(window.start), seconds(window.end), service.step, rules.zone)
    masks = {
        cal.resource.id: resource_mask(cal, starts, grid_key, shape, span)
        for domain in domains
        for cal in domain
    }
    counts = [req.count for req in service.requirements]
    for component in components(domains):
        allowed &= component_mask(component, domains, counts, masks, allowed)
        if not allowed:
            return []
    return [start for i, start in enumerate(starts) if allowed >> i & 1]


def component_mask(
    component: list[int],
    domains: Sequence[Sequence[ResourceCalendar]],
    counts: Sequence[int],
    masks: Mapping[str, int],
    allowed: int,
) -> int:
    # Cheap necessary condition: every requirement has at least one free candidate.
    mask = allowed
    for req in component:
        union = 0
        for cal in domains[req]:
            union |= masks[cal.resource.id]
        mask &= union
    if len(component) == 1 and counts[component[0]] == 1:
        return mask  # one unit, no sharing: the union is exact
    ids = [[cal.resource.id for cal in domains[req]] for req in component]
    sub_counts = [counts[req] for req in component]
    position = 0
    remaining = mask
    while remaining:
        low = remaining & -remaining
        position = low.bit_length() - 1
        remaining ^= low
        free = [[rid for rid in rids if masks[rid] >> position & 1] for rids in ids]
        if match(free, sub_counts) is None:
            mask &= ~low
    return mask


def explain(
    service: Service,
    calendars: Mapping[str, ResourceCalendar],
    start: datetime,
    now: datetime,
    rules: Rules,
) -> Verdict:
    """Why ``start`` is (or is not) bookable — the first failing check, most specific first."""
    if start < now + rules.min_lead:
        return LeadTime(now + rules.min_lead)
    if rules.max_advance is not None and start > now + rules.max_advance:
        return BeyondMaxAdvance(now + rules.max_advance)
    day = local_date(start, rules.zone)
    if day in rules.blackout_dates:
        return Blackout(day)
    day_lo, _ = day_span(day, rules.zone)
    if (seconds(start) - day_lo) % int(service.step.total_seconds()) or start.microsecond:
        return OffGrid(service.step)
    outcome = free_candidates(service, calendars, start)
    if not isinstance(outcome, list):
        return outcome
    assignment = match(outcome, [req.count for req in service.requirements])
    if assignment is None:
        return NoJointAssignment(tuple(range(len(service.requirements))))
    return Offered(start, start + service.duration, tuple(assignment))


Refusal = NoQualifiedResource | OutsideHours | Conflict | CapacityReached


def free_candidates(
    service: Service, calendars: Mapping[str, ResourceCalendar], start: datetime
) -> list[list[str]] | Refusal:
    """Per requirement, the ids of qualified resources free for a booking at ``start``
    (working hours, busy time, daily capacity), or why some requirement has too few."""
    footprint = service.footprint(start)
    minutes = int(service.duration.total_seconds() // 60)
    free_ids: list[list[str]] = []
    for index, (req, domain) in enumerate(
        zip(service.requirements, candidates(service, calendars), strict=True)
    ):
        if len(domain) < req.count:
            return NoQualifiedResource(index, unqualified_detail(req, len(domain)))
        free: list[str] = []
        outside: list[str] = []
        conflicts: list[tuple[str, Busy]] = []
        full: list[tuple[str, date]] = []
        for cal in domain:
            rid = cal.resource.id
            if not cal.works_through(footprint):
                outside.append(rid)
                continue
            hits = cal.conflicts(footprint)
            if hits:
                conflicts.extend((rid, busy) for busy in hits)
                continue
            resource_day = local_date(start, cal.resource.zone)
            if not cal.has_capacity(resource_day, minutes):
                full.append((rid, resource_day))
                continue
            free.append(rid)
        if len(free) < req.count:
            if conflicts:
                return Conflict(index, tuple(conflicts))
            if full:
                return CapacityReached(index, tuple(full))
            return OutsideHours(index, tuple(outside))
        free_ids.append(free)
    return free_ids


def unqualified_detail(req: Requirement, found: int) -> str:
    wanted = f"{req.count} {req.kind.value}"
    if req.skills:
        wanted += " with skills " + ", ".join(sorted(req.skills))
    if req.resource_ids is not None:
        wanted += " among " + ", ".join(sorted(req.resource_ids))
    return f"needs {wanted}; {found} qualified"
