"""Synthetic assignment workloads: calendars and a waiting queue, built from one seed.

Pure and reproducible: everything is drawn from ``random.Random(seed)`` in a fixed order, so
the same arguments give the same workload (a benchmark and a test can share it).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from engine.assignment import QueuedAppointment
from engine.calendar import ResourceCalendar
from engine.intervals import Interval
from engine.model import Busy, BusyKind, Requirement, Resource, ResourceKind, Rules, Service
from engine.recurrence import Series
from engine.timezones import to_instant

STAFF = ResourceKind.STAFF
ROOM = ResourceKind.ROOM
SKILLS = ("cut", "colour", "massage", "nails", "facial")
# How common each skill is among staff: facials are the scarce specialty.
_SKILL_WEIGHTS = (5, 3, 3, 3, 1)


def _services() -> tuple[tuple[Service, int], ...]:
    """The menu, with how often each is queued."""
    minute = timedelta(minutes=1)

    def staff(*skills: str, count: int = 1) -> Requirement:
        return Requirement(STAFF, frozenset(skills), count)

    def room(*features: str) -> Requirement:
        return Requirement(ROOM, frozenset(features))

    return (
        (Service("cut", 30 * minute, (staff("cut"),), buffer_after=5 * minute), 6),
        (
            Service(
                "colour", 90 * minute, (staff("colour"), room("sink")), buffer_after=10 * minute
            ),
            3,
        ),
        (
            Service(
                "massage",
                60 * minute,
                (staff("massage"), room("quiet")),
                buffer_before=10 * minute,
                buffer_after=10 * minute,
                step=30 * minute,
            ),
            3,
        ),
        (Service("nails", 45 * minute, (staff("nails"),)), 3),
        (
            Service("facial", 60 * minute, (staff("facial"), room()), step=30 * minute),
            2,
        ),
        (
            Service(
                "duo-massage",
                60 * minute,
                (staff("massage", count=2), room("quiet")),
                buffer_after=15 * minute,
                step=30 * minute,
            ),
            1,
        ),
    )


# (RRULE, local start, hours) shifts; a pattern is one or two of them.
_PATTERNS = (
    (("FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR", time(9), 8),),
    (("FREQ=WEEKLY;BYDAY=TU,WE,TH,FR,SA", time(10), 8),),
    (
        ("FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR", time(8), 4),
        ("FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR", time(13), 5),
    ),
    (("FREQ=WEEKLY;BYDAY=MO,WE,FR,SA", time(12), 8),),
)


@dataclass(frozen=True, slots=True)
class Workload:
    """Inputs for ``engine.assignment.assign`` / ``greedy_assign``."""

    calendars: Mapping[str, ResourceCalendar]
    queue: tuple[QueuedAppointment, ...]
    now: datetime
    rules: Rules


def generate_queue(
    seed: int,
    *,
    appointments: int = 500,
    staff: int = 40,
    rooms: int = 10,
    days: int = 6,
    first_day: date = date(2025, 3, 3),
    zone: str = "America/New_York",
    other_zone: str = "America/Phoenix",
) -> Workload:
    """A working week of a salon: ``staff`` staff with skills, shifts, daily limits and
    existing bookings, ``rooms`` rooms with features, and ``appointments`` queued requests
    starting on ``days`` days from ``first_day``. Windows range from an exact time to two
    days (so by default the late ones run over New York's spring-forward on 2025-03-09).
    About one staff member in six keeps ``other_zone``'s clocks, so their daily capacity is
    counted on their own local days. Demand grows toward the end of the week.
    """
    rng = random.Random(seed)
    services = _services()
    anchor = first_day - timedelta(days=7)  # DTSTART a week early: the first week is complete
    calendars: dict[str, ResourceCalendar] = {}

    def shifts(zone_name: str, pattern: tuple[tuple[str, time, int], ...]) -> list[Series]:
        return [
            Series(zone_name, datetime.combine(anchor, at), timedelta(hours=hours), rule)
            for rule, at, hours in pattern
        ]

    def local(day_offset: int, minutes: int, zone_name: str) -> datetime:
        day = first_day + timedelta(days=day_offset)
        return to_instant(datetime.combine(day, time()) + timedelta(minutes=minutes), zone_name)

    for n in range(staff):
        rid = f"staff-{n:02d}"
        zone_name = other_zone if rng.random() < 1 / 6 else zone
        skills = frozenset(rng.choices(SKILLS, _SKILL_WEIGHTS, k=rng.randint(1, 3)))
        resource = Resource(
            rid,
            STAFF,
            zone_name,
            skills,
            daily_capacity=rng.choice((None, 5, 6, 7, 8)),
            daily_minutes=rng.choice((None, None, 300, 360, 420)),
        )
        busy: list[Busy] = []
        for k in range(rng.randint(2, 8)):
            start = local(rng.randrange(days), rng.randrange(9 * 60, 16 * 60, 15), zone_name)
            length = timedelta(minutes=rng.choice((30, 45, 60, 90)))
            busy.append(
                Busy(Interval(start, start + length), f"{rid}-b{k}", BusyKind.BOOKING, start)
            )
        if rng.random() < 0.25:  # half a day off
            start = local(rng.randrange(days), rng.choice((8 * 60, 13 * 60)), zone_name)
            busy.append(
                Busy(Interval(start, start + timedelta(hours=5)), f"{rid}-off", BusyKind.TIME_OFF)
            )
        calendars[rid] = ResourceCalendar(resource, shifts(zone_name, rng.choice(_PATTERNS)), busy)

    room_hours = (("FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR,SA", time(8), 12),)
    for n in range(rooms):
        rid = f"room-{n:02d}"
        features = frozenset(f for f in ("sink", "quiet") if rng.random() < 0.5)
        resource = Resource(rid, ROOM, zone, features)
        busy = []
        for k in range(rng.randint(0, 4)):
            start = local(rng.randrange(days), rng.randrange(8 * 60, 18 * 60, 30), zone)
            busy.append(
                Busy(Interval(start, start + timedelta(hours=1)), f"{rid}-b{k}", BusyKind.BOOKING)
            )
        calendars[rid] = ResourceCalendar(resource, shifts(zone, room_hours), busy)

    menu = [service for service, _ in services]
    weights = [weight for _, weight in services]
    # Demand peaks late in the day and at the end of the week, where first fit hurts most.
    day_weights = [1 + d for d in range(days)]
    queue: list[QueuedAppointment] = []
    for n in range(appointments):
        service = rng.choices(menu, weights)[0]
        day = rng.choices(range(days), day_weights)[0]
        earliest = local(day, rng.choice(range(9 * 60, 18 * 60, 30)), zone)
        width = timedelta(hours=rng.choice((0, 1, 2, 3, 4, 8, 24, 48)))
        priority = rng.choice((0, 0, 0, 1, 1, 2, 3))
        queue.append(QueuedAppointment(f"q{n:04d}", service, earliest, earliest + width, priority))

    rules = Rules(zone=zone, min_lead=timedelta(hours=1), max_advance=timedelta(days=60))
    now = local(-1, 12 * 60, zone)
    return Workload(calendars=calendars, queue=tuple(queue), now=now, rules=rules)
