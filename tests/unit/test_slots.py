from datetime import date, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.calendar import ResourceCalendar, instant
from engine.intervals import Interval
from engine.model import Busy, BusyKind, Requirement, Resource, ResourceKind, Rules, Service
from engine.recurrence import Series
from engine.reference import availability_bruteforce
from engine.slots import (
    BeyondMaxAdvance,
    Blackout,
    CapacityReached,
    Conflict,
    LeadTime,
    NoJointAssignment,
    NoQualifiedResource,
    Offered,
    OffGrid,
    OutsideHours,
    availability,
    explain,
    grid,
)
from engine.timezones import to_local
from tests.unit.engine_factories import booking, calendars, room, staff, utc

NY = "America/New_York"
NOW = utc(2024, 5, 1)
DAY = Interval(utc(2024, 5, 6), utc(2024, 5, 7))  # a Monday; 09:00-17:00 EDT = 13:00-21:00 UTC
STAFF = ResourceKind.STAFF


def service(
    *reqs: Requirement, minutes: int = 60, step: int = 30, before: int = 0, after: int = 0
) -> Service:
    return Service(
        "svc",
        timedelta(minutes=minutes),
        reqs or (Requirement(STAFF),),
        timedelta(minutes=before),
        timedelta(minutes=after),
        timedelta(minutes=step),
    )


def hours(slots: list) -> list[str]:  # type: ignore[type-arg]
    return [s.start.strftime("%H:%M") for s in slots]


def test_single_staff_day_with_a_booking() -> None:
    cals = calendars(staff("a"))
    cals["a"].add(booking(utc(2024, 5, 6, 15), 60))
    slots = availability(service(), cals, DAY, NOW, Rules(zone=NY))
    assert hours(slots) == [
        "13:00",
        "13:30",
        "14:00",
        "16:00",
        "16:30",
        "17:00",
        "17:30",
        "18:00",
        "18:30",
        "19:00",
        "19:30",
        "20:00",
    ]


def test_buffers_widen_the_footprint_on_both_sides() -> None:
    cals = calendars(staff("a"))
    cals["a"].add(booking(utc(2024, 5, 6, 15), 60))
    slots = availability(service(before=15, after=15), cals, DAY, NOW, Rules(zone=NY))
    # needs 09:00+15m..., ends 15m before the 11:00 booking, and 15m clear after noon
    assert hours(slots) == ["13:30", "16:30", "17:00", "17:30", "18:00", "18:30", "19:00", "19:30"]


def test_skills_and_distinct_resources() -> None:
    cals = calendars(staff("a", skills="colour"), staff("b", skills="cut"), room("r"))
    colour = Requirement(STAFF, frozenset({"colour"}))
    both = service(colour, Requirement(ResourceKind.ROOM))
    assert len(availability(both, cals, DAY, NOW, Rules(zone=NY))) == 15
    two_staff = service(Requirement(STAFF, count=2))
    cals["b"].add(booking(utc(2024, 5, 6, 13), 120))
    assert hours(availability(two_staff, cals, DAY, NOW, Rules(zone=NY)))[0] == "15:00"
    verdict = explain(two_staff, cals, utc(2024, 5, 6, 13), NOW, Rules(zone=NY))
    assert isinstance(verdict, Conflict) and verdict.conflicts[0][0] == "b"


def test_shared_candidates_need_a_matching() -> None:
    # Two requirements both satisfiable by "ab" alone: each has a free candidate, but not
    # two distinct ones once "a" is busy.
    cals = calendars(staff("ab", skills="x y"), staff("a", skills="x"))
    svc = service(Requirement(STAFF, frozenset({"x"})), Requirement(STAFF, frozenset({"y"})))
    cals["a"].add(booking(utc(2024, 5, 6, 13), 60))
    slots = availability(svc, cals, DAY, NOW, Rules(zone=NY))
    assert hours(slots)[0] == "14:00"
    verdict = explain(svc, cals, utc(2024, 5, 6, 13), NOW, Rules(zone=NY))
    assert verdict == NoJointAssignment((0, 1))
    offered = explain(svc, cals, utc(2024, 5, 6, 14), NOW, Rules(zone=NY))
    assert isinstance(offered, Offered)
    assert offered.assignment == ((0, "a"), (1, "ab"))


def test_rules_lead_time_max_advance_blackout() -> None:
    cals = calendars(staff("a"))
    rules = Rules(
        zone=NY,
        min_lead=timedelta(hours=2),
        max_advance=timedelta(days=6),
        blackout_dates=frozenset({date(2024, 5, 7)}),
    )
    now = utc(2024, 5, 6, 14, 10)
    slots = availability(service(), cals, Interval(utc(2024, 5, 6), utc(2024, 5, 14)), now, rules)
    days = sorted({s.start.date() for s in slots})
    assert days == [date(2024, 5, 6), date(2024, 5, 8), date(2024, 5, 9), date(2024, 5, 10)]
    assert slots[0].start == utc(2024, 5, 6, 16, 30)
    assert explain(service(), cals, utc(2024, 5, 6, 16), now, rules) == LeadTime(
        utc(2024, 5, 6, 16, 10)
    )
    assert explain(service(), cals, utc(2024, 5, 7, 14), now, rules) == Blackout(date(2024, 5, 7))
    assert isinstance(explain(service(), cals, utc(2024, 5, 13, 14), now, rules), BeyondMaxAdvance)


def test_why_not_explanations() -> None:
    cals = calendars(staff("a", daily_capacity=1), staff("b", skills="laser"))
    cals["a"].add(booking(utc(2024, 5, 7, 13), 60, "b1"))
    rules = Rules(zone=NY)
    svc = service()
    assert explain(svc, cals, utc(2024, 5, 6, 12), NOW, rules) == OutsideHours(0, ("a", "b"))
    assert explain(svc, cals, utc(2024, 5, 6, 13, 10), NOW, rules) == OffGrid(timedelta(minutes=30))
    only_a = service(Requirement(STAFF, resource_ids=frozenset({"a"})))
    conflict = explain(only_a, cals, utc(2024, 5, 7, 13, 30), NOW, rules)
    assert isinstance(conflict, Conflict) and conflict.conflicts[0][1].ref == "b1"
    assert explain(only_a, cals, utc(2024, 5, 7, 16), NOW, rules) == CapacityReached(
        0, (("a", date(2024, 5, 7)),)
    )
    laser_twice = service(Requirement(STAFF, frozenset({"laser"}), count=2))
    verdict = explain(laser_twice, cals, utc(2024, 5, 7, 16), NOW, rules)
    assert isinstance(verdict, NoQualifiedResource) and "laser" in verdict.detail
    assert availability(laser_twice, cals, DAY, NOW, rules) == []


def test_grid_follows_the_rules_zone_across_lord_howe_half_hour_shift() -> None:
    zone = "Australia/Lord_Howe"
    # 2024-10-06 is 23.5 hours long: the hourly grid from local midnight shifts to :30.
    lo, hi = utc(2024, 10, 5, 13, 30), utc(2024, 10, 6, 13)
    starts = [instant(s) for s in grid(Interval(lo, hi), timedelta(hours=1), zone)]
    assert len(starts) == 24
    walls = [to_local(s, zone).strftime("%H:%M") for s in starts]
    assert walls[:3] == ["00:00", "01:00", "02:30"]


def test_grid_skips_apias_missing_day() -> None:
    starts = grid(
        Interval(utc(2011, 12, 29, 10), utc(2011, 12, 31, 10)), timedelta(hours=6), "Pacific/Apia"
    )
    local_days = [to_local(instant(s), "Pacific/Apia").date() for s in starts]
    assert local_days == [date(2011, 12, 29)] * 4 + [date(2011, 12, 31)] * 4


def test_recurring_working_hours_across_dst_day() -> None:
    # Sunday 2024-03-10: 09:00 EDT = 13:00 UTC; the day before it was 14:00 UTC.
    cals = calendars(staff("a"), rule="FREQ=DAILY")
    slots = availability(
        service(step=60),
        cals,
        Interval(utc(2024, 3, 9), utc(2024, 3, 11)),
        NOW - timedelta(days=90),
        Rules(zone=NY),
    )
    firsts = sorted(
        {
            min(s.start for s in slots if s.start.date() == d)
            for d in (date(2024, 3, 9), date(2024, 3, 10))
        }
    )
    assert firsts == [utc(2024, 3, 9, 14), utc(2024, 3, 10, 13)]


# --- property: the solver agrees exactly with brute force on small random instances ----------
ZONES = [
    "America/New_York",
    "America/Phoenix",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Europe/London",
]
BASES = [utc(2024, 3, 9), utc(2024, 10, 5), utc(2024, 11, 2), utc(2024, 6, 10), utc(2024, 3, 30)]


@st.composite
def instances(
    draw: st.DrawFn,
) -> tuple[Service, dict[str, ResourceCalendar], Interval, datetime, Rules]:
    base = draw(st.sampled_from(BASES))
    window = Interval(base, base + timedelta(days=draw(st.integers(1, 3))))
    skills = st.frozensets(st.sampled_from(["x", "y"]), max_size=2)
    calendars: dict[str, ResourceCalendar] = {}
    for i in range(draw(st.integers(2, 6))):
        kind = draw(st.sampled_from([ResourceKind.STAFF, ResourceKind.STAFF, ResourceKind.ROOM]))
        zone = draw(st.sampled_from(ZONES))
        resource = Resource(
            f"r{i}",
            kind,
            zone,
            draw(skills),
            daily_capacity=draw(st.sampled_from([None, None, 1, 2])),
            daily_minutes=draw(st.sampled_from([None, None, 60, 150])),
        )
        hours = [
            Series(
                zone,
                datetime(2024, 1, 1, draw(st.integers(0, 20)), draw(st.sampled_from([0, 30]))),
                timedelta(minutes=draw(st.integers(2, 20)) * 30),
                draw(
                    st.sampled_from(
                        ["FREQ=DAILY", "FREQ=WEEKLY;BYDAY=MO,WE,FR,SA", "FREQ=DAILY;INTERVAL=2"]
                    )
                ),
            )
            for _ in range(draw(st.integers(1, 2)))
        ]
        busy = [
            Busy(
                Interval(s, s + timedelta(minutes=draw(st.integers(1, 16)) * 15)),
                f"b{i}.{j}",
                draw(st.sampled_from(list(BusyKind))),
            )
            for j in range(draw(st.integers(0, 5)))
            for s in [window.start + timedelta(minutes=15 * draw(st.integers(-8, 4 * 24 * 3)))]
        ]
        calendars[resource.id] = ResourceCalendar(resource, hours, busy)
    requirements = tuple(
        Requirement(
            draw(st.sampled_from([ResourceKind.STAFF, ResourceKind.STAFF, ResourceKind.ROOM])),
            draw(st.frozensets(st.sampled_from(["x", "y"]), max_size=1)),
            draw(st.sampled_from([1, 1, 2])),
        )
        for _ in range(draw(st.integers(1, 2)))
    )
    svc = Service(
        "s",
        timedelta(minutes=15 * draw(st.integers(1, 8))),
        requirements,
        timedelta(minutes=draw(st.sampled_from([0, 15]))),
        timedelta(minutes=draw(st.sampled_from([0, 10, 30]))),
        timedelta(minutes=draw(st.sampled_from([15, 20, 30, 60]))),
    )
    now = window.start + timedelta(minutes=draw(st.integers(-3000, 1500)))
    rules = Rules(
        zone=draw(st.sampled_from(ZONES)),
        min_lead=timedelta(minutes=draw(st.integers(0, 180))),
        max_advance=draw(st.sampled_from([None, None, timedelta(days=3), timedelta(hours=90)])),
        blackout_dates=draw(
            st.frozensets(
                st.sampled_from([(base + timedelta(days=d)).date() for d in range(3)]), max_size=1
            )
        ),
    )
    return svc, calendars, window, now, rules


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_solver_agrees_with_bruteforce(
    instance: tuple[Service, dict[str, ResourceCalendar], Interval, datetime, Rules],
) -> None:
    svc, cals, window, now, rules = instance
    fast = availability(svc, cals, window, now, rules)
    assert fast == availability_bruteforce(svc, cals, window, now, rules)
    offered = {s.start for s in fast}
    for start in (instant(s) for s in grid(window, svc.step, rules.zone)):
        verdict = explain(svc, cals, start, now, rules)
        assert isinstance(verdict, Offered) == (start in offered), verdict


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 2), st.integers(0, 40), st.integers(1, 8)),
        min_size=1,
        max_size=25,
    )
)
def test_memoised_masks_follow_every_add_and_remove(ops: list[tuple[bool, int, int, int]]) -> None:
    """A long-lived calendar (the simulator's) answers like one built afresh after each change."""
    resources = [staff("a", daily_capacity=3), staff("b", daily_minutes=180), room("r")]
    svc = service(Requirement(STAFF), Requirement(ResourceKind.ROOM), minutes=45, after=15)
    rules = Rules(zone=NY)
    week = Interval(utc(2024, 5, 6), utc(2024, 5, 9))
    live = calendars(*resources)
    entries: dict[int, list[Busy]] = {0: [], 1: [], 2: []}
    for n, (add, which, quarter, quarters) in enumerate(ops):
        rid = resources[which].id
        if add or not entries[which]:
            start = (
                utc(2024, 5, 6, 13) + timedelta(minutes=15 * quarter) + timedelta(days=quarter % 3)
            )
            # Refs are unique, as booking ids are: two equal entries would be one in the index.
            entry = booking(start, 15 * quarters, f"b{n}")
            entries[which].append(entry)
            live[rid].add(entry)
        else:
            live[rid].remove(entries[which].pop(0))
        fresh = {
            r.id: ResourceCalendar(r, live[r.id].working_hours, entries[i])
            for i, r in enumerate(resources)
        }
        assert availability(svc, live, week, NOW, rules) == availability(
            svc, fresh, week, NOW, rules
        )
