"""`slotwise bench engine`: 14-day availability of a staff + room service, solver vs brute force.

The scenario: 50 staff and 20 rooms across three zones (New York, London, Sydney), weekday
working hours in each resource's own zone, 2,000 existing bookings, and a service needing
one staff member with the "colour" skill plus one room. Both algorithms answer the same
query in the same run; the benchmark also checks that they agree.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from engine.calendar import ResourceCalendar
from engine.intervals import Interval
from engine.model import Busy, Requirement, Resource, ResourceKind, Rules, Service
from engine.recurrence import Series
from engine.reference import availability_bruteforce
from engine.slots import Slot, availability
from engine.timezones import local_date

ZONES = ("America/New_York", "Europe/London", "Australia/Sydney")
SKILLS = ("colour", "cut", "perm", "massage")
NOW = datetime(2026, 3, 2, tzinfo=UTC)  # fixed, so runs are comparable; spans two DST changes


@dataclass(frozen=True, slots=True)
class Scenario:
    service: Service
    calendars: dict[str, ResourceCalendar]
    window: Interval
    now: datetime
    rules: Rules
    bookings: int


def build_scenario(
    seed: int = 1, staff: int = 50, rooms: int = 20, bookings: int = 2000, days: int = 14
) -> Scenario:
    rng = random.Random(seed)
    window = Interval(NOW, NOW + timedelta(days=days))
    calendars: dict[str, ResourceCalendar] = {}
    for i in range(staff + rooms):
        zone = ZONES[i % len(ZONES)]
        if i < staff:
            skills = frozenset(rng.sample(SKILLS, rng.randint(1, 3)))
            resource = Resource(f"staff-{i}", ResourceKind.STAFF, zone, skills, daily_capacity=8)
        else:
            resource = Resource(f"room-{i - staff}", ResourceKind.ROOM, zone)
        opening = rng.choice((7, 8, 9, 10))
        hours = Series(
            zone,
            datetime(2025, 1, 6, opening),
            timedelta(hours=8),
            "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR",
        )
        calendars[resource.id] = ResourceCalendar(resource, [hours])
    placed = 0
    ids = list(calendars)
    while placed < bookings:
        cal = calendars[rng.choice(ids)]
        free = cal.free(window)
        if not free:
            continue
        gap = rng.choice(free)
        length = timedelta(minutes=rng.choice((30, 45, 60, 90)))
        slack = int((gap.duration - length).total_seconds() // 900)
        if slack < 0:
            continue
        start = gap.start + timedelta(minutes=15 * rng.randint(0, slack))
        day = local_date(start, cal.resource.zone)
        if not cal.has_capacity(day, 0):
            continue
        cal.add(Busy(Interval(start, start + length), f"booking-{placed}"))
        placed += 1
    service = Service(
        "colour",
        timedelta(minutes=60),
        (Requirement(ResourceKind.STAFF, frozenset({"colour"})), Requirement(ResourceKind.ROOM)),
        buffer_after=timedelta(minutes=10),
        step=timedelta(minutes=15),
    )
    rules = Rules(zone="America/New_York", min_lead=timedelta(hours=2))
    return Scenario(service, calendars, window, NOW, rules, placed)


def _query(s: Scenario) -> list[Slot]:
    return availability(s.service, s.calendars, s.window, s.now, s.rules)


def run(seed: int = 1, repeats: int = 60, brute_repeats: int = 2) -> dict[str, object]:
    scenario = build_scenario(seed)
    started = time.perf_counter()
    fast = _query(scenario)
    cold_ms = (time.perf_counter() - started) * 1000
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        _query(scenario)
        samples.append((time.perf_counter() - started) * 1000)
    brute_samples = []
    for _ in range(brute_repeats):
        started = time.perf_counter()
        slow = availability_bruteforce(
            scenario.service, scenario.calendars, scenario.window, scenario.now, scenario.rules
        )
        brute_samples.append((time.perf_counter() - started) * 1000)
    if slow != fast:
        raise AssertionError("solver and brute force disagree on the benchmark scenario")
    p50 = statistics.median(samples)
    brute = statistics.median(brute_samples)
    return {
        "bench": "engine",
        "p50_ms": round(p50, 3),
        "p99_ms": round(statistics.quantiles(samples, n=100)[98], 3),
        "speedup_vs_bruteforce": round(brute / p50, 1),
        "bruteforce_ms": round(brute, 1),
        "cold_ms": round(cold_ms, 3),
        "slots": len(fast),
        "staff": 50,
        "rooms": 20,
        "bookings": scenario.bookings,
        "agree": True,
    }
