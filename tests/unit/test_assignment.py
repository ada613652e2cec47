"""Queue assignment: hand-built cases, an independent validator, brute force on tiny batches,
and the generated 500-appointment week."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import combinations, product
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.assignment import (
    Assignment,
    AssignmentResult,
    LostToCompetition,
    NoFeasibleStart,
    NoQualifiedResource,
    QueuedAppointment,
    _first_fit,
    _greedy_order,
    _prepare,
    assign,
    booking_entry,
    greedy_assign,
)
from engine.calendar import ResourceCalendar
from engine.errors import InvalidModel
from engine.intervals import Interval
from engine.model import Busy, BusyKind, Requirement, Resource, ResourceKind, Rules, Service
from engine.recurrence import Series
from engine.timezones import to_local
from engine.workload import generate_queue

STAFF, ROOM = ResourceKind.STAFF, ResourceKind.ROOM
NY = "America/New_York"
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = date(2025, 6, 10)  # a Tuesday
NOW = datetime(2025, 6, 1, tzinfo=UTC)
UTC_RULES = Rules()


def at(hour: int, minute: int = 0, day: date = DAY) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=UTC)


def shift(zone: str, start: time = time(9), hours: int = 8) -> Series:
    """Daily working hours from a week before DAY."""
    return Series(
        zone, datetime.combine(DAY - timedelta(days=7), start), hours * HOUR, "FREQ=DAILY"
    )


def calendar(
    rid: str,
    kind: ResourceKind = STAFF,
    skills: Sequence[str] = (),
    *,
    zone: str = "UTC",
    capacity: int | None = None,
    minutes: int | None = None,
    busy: Sequence[Busy] = (),
    hours: tuple[time, int] = (time(9), 8),
) -> ResourceCalendar:
    resource = Resource(rid, kind, zone, frozenset(skills), capacity, minutes)
    return ResourceCalendar(resource, [shift(zone, *hours)], busy)


def cals(*items: ResourceCalendar) -> dict[str, ResourceCalendar]:
    return {cal.resource.id: cal for cal in items}


def service(*reqs: Requirement, minutes: int = 60, step: int = 30, after: int = 0) -> Service:
    return Service(
        f"svc{minutes}",
        minutes * MIN,
        reqs or (Requirement(STAFF),),
        buffer_after=after * MIN,
        step=step * MIN,
    )


def queued(
    qid: str, svc: Service, earliest: datetime, latest: datetime | None = None, priority: int = 0
) -> QueuedAppointment:
    return QueuedAppointment(qid, svc, earliest, latest or earliest, priority)


def both(
    queue: Sequence[QueuedAppointment],
    calendars: Mapping[str, ResourceCalendar],
    now: datetime = NOW,
    rules: Rules = UTC_RULES,
) -> tuple[AssignmentResult, AssignmentResult]:
    """CP-SAT and greedy results, each checked by the validator."""
    solved = assign(queue, calendars, now, rules, time_limit=10, workers=1)
    greedy = greedy_assign(queue, calendars, now, rules)
    for result in (solved, greedy):
        assert Validator(queue, calendars, now, rules).problems(result.assigned) == []
        assert partition_ok(result, queue)
    return solved, greedy


def placed(result: AssignmentResult) -> dict[str, Assignment]:
    return {a.appointment_id: a for a in result.assigned}


def reasons(result: AssignmentResult) -> dict[str, object]:
    return {u.appointment_id: u.reason for u in result.unassigned}


# --- an independent validator: plain datetime comparisons only -------------------------------
class Validator:
    """Checks assignments against the raw inputs, sharing no code with the engine's solver:
    every rule is restated here with datetimes, sets and sums."""

    def __init__(
        self,
        queue: Sequence[QueuedAppointment],
        calendars: Mapping[str, ResourceCalendar],
        now: datetime,
        rules: Rules,
    ) -> None:
        self.queue = {a.id: a for a in queue}
        self.cals = {cal.resource.id: cal for cal in calendars.values()}
        self.now, self.rules = now, rules
        self.working: dict[str, list[tuple[datetime, datetime]]] = {}
        if queue:
            lo = min(a.earliest for a in queue) - timedelta(days=2)
            hi = max(a.latest for a in queue) + timedelta(days=2)
            for rid, cal in self.cals.items():
                spans = sorted(
                    (o.start, o.end)
                    for series in cal.working_hours
                    for o in series.expand(Interval(lo, hi))
                )
                merged: list[tuple[datetime, datetime]] = []
                for a, b in spans:  # touching stretches are one stretch
                    if merged and a <= merged[-1][1]:
                        merged[-1] = (merged[-1][0], max(merged[-1][1], b))
                    else:
                        merged.append((a, b))
                self.working[rid] = merged

    def on_grid(self, start: datetime, step: timedelta) -> bool:
        tz = ZoneInfo(self.rules.zone)
        midnight = datetime.combine(start.astimezone(tz).date(), time(), tzinfo=tz)
        return (start - midnight.astimezone(UTC)) % step == timedelta(0)

    def grid(self, appointment: QueuedAppointment) -> list[datetime]:
        """Grid starts in [earliest, latest]: every step from each local midnight."""
        tz = ZoneInfo(self.rules.zone)
        day = appointment.earliest.astimezone(tz).date() - timedelta(days=1)
        out: list[datetime] = []
        while datetime.combine(day, time(), tzinfo=tz).astimezone(UTC) <= appointment.latest:
            start = datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)
            end = datetime.combine(day + timedelta(days=1), time(), tzinfo=tz).astimezone(UTC)
            while start < end:
                if appointment.earliest <= start <= appointment.latest:
                    out.append(start)
                start += appointment.service.step
            day += timedelta(days=1)
        return out

    def problems(self, assigned: Sequence[Assignment]) -> list[str]:
        out: list[str] = []
        rules = self.rules
        footprints: dict[str, list[tuple[datetime, datetime, str]]] = defaultdict(list)
        new_load: dict[tuple[str, date], list[int]] = defaultdict(lambda: [0, 0])
        ids = [a.appointment_id for a in assigned]
        if len(ids) != len(set(ids)):
            out.append("an appointment assigned twice")
        for a in assigned:
            appt = self.queue[a.appointment_id]
            svc = appt.service
            tag = a.appointment_id
            if a.end - a.start != svc.duration:
                out.append(f"{tag}: wrong end")
            if not appt.earliest <= a.start <= appt.latest:
                out.append(f"{tag}: outside its window")
            if a.start < self.now + rules.min_lead:
                out.append(f"{tag}: inside the lead time")
            if rules.max_advance is not None and a.start > self.now + rules.max_advance:
                out.append(f"{tag}: beyond max advance")
            if a.start.astimezone(ZoneInfo(rules.zone)).date() in rules.blackout_dates:
                out.append(f"{tag}: on a blackout date")
            if not self.on_grid(a.start, svc.step):
                out.append(f"{tag}: off grid")
            rids = [rid for _, rid in a.resources]
            if len(rids) != len(set(rids)):
                out.append(f"{tag}: a resource fills two units")
            for j, req in enumerate(svc.requirements):
                got = [rid for k, rid in a.resources if k == j]
                if len(got) != req.count:
                    out.append(f"{tag}: requirement {j} has {len(got)} of {req.count}")
                for rid in got:
                    res = self.cals[rid].resource
                    pinned_out = req.resource_ids is not None and rid not in req.resource_ids
                    if res.kind != req.kind or not req.skills <= res.skills or pinned_out:
                        out.append(f"{tag}: {rid} not qualified for requirement {j}")
            if any(k >= len(svc.requirements) for k, _ in a.resources):
                out.append(f"{tag}: unknown requirement index")
            lo = a.start - svc.buffer_before
            hi = a.start + svc.duration + svc.buffer_after
            for rid in rids:
                cal = self.cals[rid]
                if not any(w0 <= lo and hi <= w1 for w0, w1 in self.working[rid]):
                    out.append(f"{tag}: {rid} not working through {lo}..{hi}")
                for busy in cal.busy_entries():
                    if busy.interval.start < hi and lo < busy.interval.end:
                        out.append(f"{tag}: {rid} already busy ({busy.ref})")
                footprints[rid].append((lo, hi, tag))
                day = a.start.astimezone(ZoneInfo(cal.resource.zone)).date()
                new_load[rid, day][0] += 1
                new_load[rid, day][1] += int(svc.duration.total_seconds() // 60)
        for rid, spans in footprints.items():
            for (a0, a1, x), (b0, b1, y) in combinations(spans, 2):
                if a0 < b1 and b0 < a1:
                    out.append(f"{x} and {y} overlap on {rid}")
        for (rid, day), (count, minutes) in new_load.items():
            cal = self.cals[rid]
            zone = ZoneInfo(cal.resource.zone)
            existing = [
                b
                for b in cal.busy_entries()
                if b.kind is BusyKind.BOOKING and b.counted_start.astimezone(zone).date() == day
            ]
            cap, cap_minutes = cal.resource.daily_capacity, cal.resource.daily_minutes
            if cap is not None and len(existing) + count > cap:
                out.append(f"{rid} over its daily capacity on {day}")
            total = sum(b.counted_minutes for b in existing) + minutes
            if cap_minutes is not None and total > cap_minutes:
                out.append(f"{rid} over its daily minutes on {day}")
        return out


def partition_ok(result: AssignmentResult, queue: Sequence[QueuedAppointment]) -> bool:
    """Every queued appointment is in exactly one list, each list in queue order."""
    order = [a.id for a in queue]
    got = [a.appointment_id for a in result.assigned]
    left = [u.appointment_id for u in result.unassigned]
    return sorted(got + left) == sorted(order) and all(
        sorted(ids, key=order.index) == ids for ids in (got, left)
    )


# --- hand-built cases ----------------------------------------------------------------------
def test_specialization_never_picks_a_staff_member_without_the_skill() -> None:
    cutter = calendar("cutter", skills=["cut"])
    colourist = calendar(
        "colourist", skills=["colour"], busy=[booking_entry_at("colourist", at(9), 120)]
    )
    svc = service(Requirement(STAFF, frozenset({"colour"})))
    queue = [queued("q1", svc, at(9), at(12)), queued("q2", svc, at(9), at(12))]
    for result in both(queue, cals(cutter, colourist)):
        assert result.score.assigned == 2
        assert {rid for a in result.assigned for _, rid in a.resources} == {"colourist"}
        # The free cutter at 09:00 was not an option: both start after the colourist's 11:00.
        assert all(a.start >= at(11) for a in result.assigned)


def booking_entry_at(ref: str, start: datetime, minutes: int) -> Busy:
    return Busy(Interval(start, start + minutes * MIN), f"{ref}-existing", BusyKind.BOOKING, start)


def test_capacity_one_blocks_a_second_appointment_that_day() -> None:
    one_a_day = calendar("a", capacity=1)
    svc = service()
    queue = [queued("q1", svc, at(9), at(16), priority=1), queued("q2", svc, at(9), at(16))]
    for result in both(queue, cals(one_a_day)):
        assert set(placed(result)) == {"q1"}
        assert reasons(result) == {"q2": LostToCompetition(feasible_starts=15)}


def test_existing_load_counts_toward_capacity() -> None:
    # One booking already on the day and capacity 1: nothing fits alone, so the reason is
    # that no start is feasible, not competition.
    busy = [booking_entry_at("a", at(9), 30)]
    full = calendar("a", capacity=1, busy=busy)
    next_day = at(9, day=DAY + timedelta(days=1))
    queue = [queued("today", service(), at(10), at(15)), queued("tomorrow", service(), next_day)]
    for result in both(queue, cals(full)):
        assert set(placed(result)) == {"tomorrow"}
        assert reasons(result) == {"today": NoFeasibleStart(grid_starts=11, allowed_by_rules=11)}


def test_daily_minutes_counted_per_local_day_of_the_resource() -> None:
    # 120 minutes a day in New York; 03:00 UTC on DAY is still the previous local day there.
    ny = calendar("a", zone=NY, minutes=120, hours=(time(0), 24))
    svc = service(minutes=90)
    late = datetime.combine(DAY, time(3), tzinfo=UTC)  # 23:00 EDT the day before
    queue = [
        queued("late", svc, late),
        queued("morning", svc, at(14)),  # 10:00 EDT on DAY
        queued("noon", svc, at(16)),  # 12:00 EDT on DAY: 180 minutes with "morning"
    ]
    for result in both(queue, cals(ny)):
        assert "late" in placed(result)
        assert result.score.assigned == 2
        assert isinstance(reasons(result).popitem()[1], LostToCompetition)


def test_a_window_across_local_midnight_is_counted_on_the_day_it_starts() -> None:
    # Capacity 1 a day in New York. "fixed" takes 23:00 EDT on the 9th; "flexible" could
    # start 20:00-00:30 EDT, but only its starts on the 10th leave the 9th's capacity alone.
    ny = calendar("a", zone=NY, capacity=1, hours=(time(0), 24))
    svc = service(minutes=30)
    ninth_2300 = datetime(2025, 6, 10, 3, tzinfo=UTC)
    queue = [
        queued("flexible", svc, ninth_2300 - 3 * HOUR, ninth_2300 + 90 * MIN),
        queued("fixed", svc, ninth_2300),
    ]
    solved, greedy = both(queue, cals(ny))
    assert placed(solved)["fixed"].start == ninth_2300
    assert placed(solved)["flexible"].start >= ninth_2300 + HOUR  # 00:00 EDT on the 10th
    # First fit takes 20:00 EDT for "flexible" and has no day left for "fixed".
    assert placed(greedy)["flexible"].start == ninth_2300 - 3 * HOUR
    assert reasons(greedy) == {"fixed": LostToCompetition(feasible_starts=1)}


def test_capacity_is_not_fooled_by_the_day_a_window_ends_on() -> None:
    # Capacity 2 a day in New York: the 9th is filled by two fixed appointments, and the
    # 10th's only starts in "flexible"'s window collide with "midnight". Three is the most.
    ny = calendar("a", zone=NY, capacity=2, hours=(time(0), 24))
    svc = service(minutes=30)
    midnight = datetime(2025, 6, 10, 4, tzinfo=UTC)  # 00:00 EDT on the 10th
    queue = [
        queued("flexible", svc, midnight - 4 * HOUR, midnight + 30 * MIN),
        queued("22:00", svc, midnight - 2 * HOUR),
        queued("23:00", svc, midnight - HOUR),
        queued("midnight", service(minutes=60), midnight),
    ]
    for result in both(queue, cals(ny)):
        assert result.score.assigned == 3


def test_two_appointments_competing_for_one_slot() -> None:
    svc = service()
    queue = [queued("low", svc, at(10)), queued("high", svc, at(10), priority=2)]
    for result in both(queue, cals(calendar("a"))):
        assert set(placed(result)) == {"high"}  # priority breaks the tie, in both solvers
        assert reasons(result) == {"low": LostToCompetition(feasible_starts=1)}


def test_unqualified_queue_names_the_requirement() -> None:
    laser = service(Requirement(STAFF), Requirement(ROOM, frozenset({"laser"})))
    pair = service(Requirement(STAFF, count=2))
    queue = [queued("laser", laser, at(10)), queued("pair", pair, at(10))]
    for result in both(queue, cals(calendar("a"), calendar("room", ROOM))):
        assert result.assigned == ()
        got = reasons(result)
        assert got["laser"] == NoQualifiedResource(1, "needs 1 room with skills laser; 0 qualified")
        assert got["pair"] == NoQualifiedResource(0, "needs 2 staff; 1 qualified")


def test_no_feasible_start_outside_working_hours_and_rules() -> None:
    svc = service()
    evening = queued("evening", svc, at(18), at(21))
    too_soon = queued("too-soon", svc, at(9), at(10))
    off_grid = queued("off-grid", svc, at(9, 10), at(9, 20))
    rules = Rules(min_lead=2 * HOUR + 30 * MIN)
    now = at(8)
    solved, greedy = both([evening, too_soon, off_grid], cals(calendar("a")), now, rules)
    for result in (solved, greedy):
        assert reasons(result) == {
            "evening": NoFeasibleStart(grid_starts=7, allowed_by_rules=7),
            "too-soon": NoFeasibleStart(grid_starts=3, allowed_by_rules=0),
            "off-grid": NoFeasibleStart(grid_starts=0, allowed_by_rules=0),
        }


def test_blackout_and_max_advance_are_respected() -> None:
    svc = service()
    next_day = DAY + timedelta(days=1)
    rules = Rules(max_advance=timedelta(days=10) + 10 * HOUR, blackout_dates=frozenset({DAY}))
    queue = [queued("q", svc, at(9), at(12, day=next_day))]
    for result in both(queue, cals(calendar("a")), NOW, rules):
        # DAY is blacked out; on the next day max advance (NOW + 10 d 10 h) ends at 10:00.
        assert placed(result)["q"].start == at(9, day=next_day)


def test_staff_and_room_are_distinct_resources() -> None:
    svc = service(Requirement(STAFF, count=2), Requirement(ROOM))
    resources = cals(
        calendar("s1"), calendar("s2"), calendar("s3"), calendar("r1", ROOM), calendar("r2", ROOM)
    )
    queue = [queued("q1", svc, at(10)), queued("q2", svc, at(10)), queued("q3", svc, at(10))]
    for result in both(queue, resources):
        assert result.score.assigned == 1  # three staff: one pair at 10:00
        (a,) = result.assigned
        assert [j for j, _ in a.resources] == [0, 0, 1]
        assert len({rid for _, rid in a.resources}) == 3
        assert a.resources[2][1].startswith("r")


def test_one_resource_qualified_for_two_requirements_fills_one_unit() -> None:
    # "senior" qualifies for both requirements; it must not fill both.
    svc = service(Requirement(STAFF, frozenset({"cut"})), Requirement(STAFF))
    resources = cals(calendar("senior", skills=["cut"]), calendar("junior"))
    queue = [queued("q", svc, at(10)), queued("solo", service(), at(10))]
    for result in both(queue, resources):
        assert result.score.assigned == 1
    solved, _ = both(queue[:1], resources)
    assert placed(solved)["q"].resources == ((0, "senior"), (1, "junior"))


def test_cp_sat_beats_first_fit_when_the_first_start_blocks_another() -> None:
    # First fit puts "flexible" at 09:00 (earliest, queue order) and "fixed" cannot start.
    svc = service()
    queue = [queued("flexible", svc, at(9), at(10)), queued("fixed", svc, at(9))]
    solved, greedy = both(queue, cals(calendar("a")))
    assert greedy.score.assigned == 1
    assert solved.score.assigned == 2 and solved.status == "OPTIMAL"
    assert placed(solved)["flexible"].start == at(10)
    assert solved.objective > greedy.objective


def test_balance_spreads_queued_appointments_over_staff() -> None:
    svc = service()
    queue = [queued(f"q{i}", svc, at(9 + 2 * i)) for i in range(4)]
    solved, greedy = both(queue, cals(calendar("a"), calendar("b")))
    assert greedy.score.balance == 4  # explain's matching takes "a" every time
    assert solved.score.balance == 2
    assert solved.score.assigned == 4


def test_buffers_are_part_of_the_footprint() -> None:
    svc = service(minutes=60, after=30)
    queue = [queued("first", svc, at(9)), queued("second", svc, at(10), at(11))]
    for result in both(queue, cals(calendar("a"))):
        assert placed(result)["second"].start == at(10, 30)


def test_inputs_are_not_mutated() -> None:
    resources = cals(calendar("a", capacity=2, busy=[booking_entry_at("a", at(9), 60)]))
    queue = [queued(f"q{i}", service(), at(9), at(16)) for i in range(3)]
    before = {rid: (cal.busy_entries(), cal.load(DAY)) for rid, cal in resources.items()}
    both(queue, resources)
    assert {rid: (cal.busy_entries(), cal.load(DAY)) for rid, cal in resources.items()} == before


def test_result_can_be_booked_with_booking_entry() -> None:
    resources = cals(calendar("a", capacity=2), calendar("b"))
    queue = [queued(f"q{i}", service(), at(9), at(12)) for i in range(4)]
    solved, _ = both(queue, resources)
    by_id = {a.id: a for a in queue}
    for a in solved.assigned:
        for _, rid in a.resources:
            entry = booking_entry(by_id[a.appointment_id], a.start)
            assert resources[rid].conflicts(entry.interval) == []
            resources[rid].add(entry)
    assert resources["a"].load(DAY) == (2, 120)
    # Booked, they are busy time like any other (``both`` validates against it), and "a"
    # has spent its capacity.
    again, _ = both(queue, resources)
    assert {rid for a in again.assigned for _, rid in a.resources} == {"b"}


def test_deterministic_time_repeats_itself() -> None:
    # Big enough that the limit, not a proof, ends the search: what is reproduced is where
    # an interrupted search stood, which a wall-clock limit would not give.
    work = generate_queue(7, appointments=150, staff=12, rooms=3, days=2)
    runs = [
        assign(work.queue, work.calendars, work.now, work.rules, deterministic_time=0.2)
        for _ in range(2)
    ]
    assert runs[0].status == "FEASIBLE"
    assert runs[0] == runs[1]


def test_stopped_before_any_solution_returns_the_first_fit_start() -> None:
    work = generate_queue(1, appointments=150, staff=12, rooms=3, days=2)
    args = (work.queue, work.calendars, work.now, work.rules)
    cut = assign(*args, time_limit=0.001)
    greedy = greedy_assign(*args)
    assert cut.status == "HINT"
    assert Validator(*args).problems(cut.assigned) == []
    assert cut.score.assigned >= greedy.score.assigned


def test_invalid_input_is_refused() -> None:
    svc = service()
    with pytest.raises(InvalidModel):
        QueuedAppointment("q", svc, at(10), at(9))
    with pytest.raises(InvalidModel):
        QueuedAppointment("q", svc, datetime(2025, 6, 10, 9), datetime(2025, 6, 10, 10))
    with pytest.raises(InvalidModel):
        assign([queued("q", svc, at(9)), queued("q", svc, at(10))], {}, NOW, UTC_RULES)
    with pytest.raises(ValueError):
        assign([], {}, NOW, UTC_RULES, time_limit=0)


def test_empty_queue() -> None:
    solved, _ = both([], cals(calendar("a")))
    assert solved.assigned == ()
    assert solved.unassigned == ()
    assert solved.status == "OPTIMAL"


def test_generator_is_reproducible_by_seed() -> None:
    def fingerprint(seed: int) -> tuple[object, ...]:
        work = generate_queue(seed, appointments=50)
        return (
            work.queue,
            work.now,
            work.rules,
            tuple(
                (rid, cal.resource, tuple(cal.busy_entries()))
                for rid, cal in work.calendars.items()
            ),
        )

    assert fingerprint(3) == fingerprint(3)
    assert fingerprint(3) != fingerprint(4)


# --- random small instances --------------------------------------------------------------------
ZONES = ["UTC", NY, "Asia/Kolkata"]
BASES = [date(2025, 3, 9), date(2025, 6, 10), date(2025, 11, 2)]  # NY spring-forward, -, fall-back


@dataclass(frozen=True)
class Instance:
    queue: tuple[QueuedAppointment, ...]
    calendars: dict[str, ResourceCalendar]
    now: datetime
    rules: Rules


@st.composite
def instances(draw: st.DrawFn, max_appointments: int, max_width: int) -> Instance:
    """Mostly feasible, often contended: shifts, busy time and windows all sit within a few
    hours of ``base`` in UTC, whatever zone a resource keeps its clocks in."""
    # Base hours put the windows across local midnight in one zone or another.
    hour = draw(st.sampled_from([4, 12, 20]))
    base = datetime.combine(draw(st.sampled_from(BASES)), time(hour), tzinfo=UTC)
    quarter = timedelta(minutes=15)
    calendars: dict[str, ResourceCalendar] = {}
    kinds = [STAFF] * draw(st.integers(1, 3)) + [ROOM] * draw(st.integers(0, 2))
    for i, kind in enumerate(kinds):
        zone = draw(st.sampled_from(ZONES))
        resource = Resource(
            f"r{i}",
            kind,
            zone,
            draw(st.sampled_from([frozenset(), frozenset({"x"}), frozenset({"x"})])),
            draw(st.sampled_from([None] * 6 + [0, 1, 2])),
            draw(st.sampled_from([None] * 4 + [60, 120])),
        )
        shifts = []
        for _ in range(draw(st.integers(1, 2))):
            # Written in the resource's local time, anchored near ``base`` in UTC.
            start = to_local(base + quarter * draw(st.integers(-16, 0)), zone)
            shifts.append(
                Series(
                    zone,
                    start - timedelta(days=2),
                    quarter * draw(st.integers(12, 40)),
                    "FREQ=DAILY",
                )
            )
        busy = []
        for k in range(draw(st.integers(0, 2))):
            start = base + quarter * draw(st.integers(-8, 16))
            length = quarter * draw(st.integers(1, 6))
            busy_kind = draw(st.sampled_from([BusyKind.BOOKING, BusyKind.TIME_OFF]))
            busy.append(Busy(Interval(start, start + length), f"b{i}{k}", busy_kind, start))
        calendars[resource.id] = ResourceCalendar(resource, shifts, busy)

    def requirements() -> tuple[Requirement, ...]:
        staff = Requirement(
            STAFF,
            draw(st.sampled_from([frozenset(), frozenset(), frozenset({"x"})])),
            draw(st.sampled_from([1, 1, 1, 2])),
        )
        if draw(st.integers(0, 2)) == 0:
            return (staff, Requirement(ROOM))
        return (staff,)

    services = [
        Service(
            f"s{n}",
            quarter * draw(st.integers(1, 4)),
            requirements(),
            quarter * draw(st.integers(0, 1)),
            quarter * draw(st.integers(0, 1)),
            quarter * draw(st.sampled_from([1, 2])),
        )
        for n in range(draw(st.integers(1, 2)))
    ]
    queue = []
    for n in range(draw(st.integers(min(2, max_appointments), max_appointments))):
        # Five-minute instants: some on a service's grid, some between its starts.
        earliest = base + 5 * MIN * draw(st.integers(-12, 36))
        width = MIN * draw(st.integers(0, max_width))
        queue.append(
            QueuedAppointment(
                f"q{n}",
                draw(st.sampled_from(services)),
                earliest,
                earliest + width,
                draw(st.integers(0, 3)),
            )
        )
    now = base - MIN * draw(st.integers(0, 180))
    blackout = (base + HOUR).date()
    rules = Rules(
        zone=draw(st.sampled_from(ZONES)),
        min_lead=MIN * draw(st.sampled_from([0, 0, 30, 90])),
        max_advance=draw(st.sampled_from([None, None, 5 * HOUR])),
        blackout_dates=draw(st.sampled_from([frozenset()] * 5 + [frozenset({blackout})])),
    )
    return Instance(tuple(queue), calendars, now, rules)


# CP-SAT solves these in milliseconds; the whole file stays well under a minute.
SMALL = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SMALL
@given(instances(max_appointments=7, max_width=240))
def test_cp_sat_results_are_valid_and_never_worse_than_greedy(instance: Instance) -> None:
    q, c, now, rules = instance.queue, instance.calendars, instance.now, instance.rules
    solved = assign(q, c, now, rules, time_limit=10, workers=2)
    greedy = greedy_assign(q, c, now, rules)
    validator = Validator(q, c, now, rules)
    assert validator.problems(solved.assigned) == []
    assert validator.problems(greedy.assigned) == []
    assert partition_ok(solved, q) and partition_ok(greedy, q)
    assert solved.status == "OPTIMAL"
    assert solved.score.assigned >= greedy.score.assigned
    assert solved.objective >= greedy.objective
    # Why-not agrees between the solvers where it does not depend on the competition.
    static = (NoQualifiedResource, NoFeasibleStart)
    assert {k: v for k, v in reasons(solved).items() if isinstance(v, static)} == {
        k: v for k, v in reasons(greedy).items() if isinstance(v, static)
    }


@SMALL
@given(instances(max_appointments=6, max_width=240))
def test_bitmask_first_fit_is_what_explain_offers(instance: Instance) -> None:
    # greedy_assign asks engine.slots.explain; CP-SAT's seed skips it. Both must agree.
    q, c, now, rules = instance.queue, instance.calendars, instance.now, instance.rules
    items = _prepare(q, c, now, rules)
    fast = _first_fit(_greedy_order(items), c, now, rules, confirm=False)
    greedy = greedy_assign(q, c, now, rules)
    assert {q[i].id: (start, res) for i, (start, res) in fast.items()} == {
        a.appointment_id: (int(a.start.timestamp()), a.resources) for a in greedy.assigned
    }


def brute_force(instance: Instance) -> tuple[int, int, int]:
    """The best (assigned, priority, -balance) by exhaustive search over every start and
    every choice of distinct qualified resources, checked by the validator."""
    validator = Validator(instance.queue, instance.calendars, instance.now, instance.rules)
    kinds = {rid: cal.resource.kind for rid, cal in instance.calendars.items()}

    def options(appt: QueuedAppointment) -> Iterator[Assignment]:
        svc = appt.service
        pools = [
            combinations(
                [rid for rid, cal in validator.cals.items() if req.admits(cal.resource)], req.count
            )
            for req in svc.requirements
        ]
        for picks in product(*[list(p) for p in pools]):
            resources = tuple(sorted((j, rid) for j, pick in enumerate(picks) for rid in pick))
            for start in validator.grid(appt):
                yield Assignment(appt.id, start, start + svc.duration, resources)

    alone = [[o for o in options(appt) if not validator.problems([o])] for appt in instance.queue]
    best = (0, 0, 0)

    def score(chosen: list[tuple[QueuedAppointment, Assignment]]) -> tuple[int, int, int]:
        per: dict[str, int] = defaultdict(int)
        for _, a in chosen:
            for _, rid in a.resources:
                per[rid] += 1
        worst: dict[ResourceKind, int] = defaultdict(int)
        for rid, n in per.items():
            worst[kinds[rid]] = max(worst[kinds[rid]], n)
        return len(chosen), sum(q.priority for q, _ in chosen), -sum(worst.values())

    def search(i: int, chosen: list[tuple[QueuedAppointment, Assignment]]) -> None:
        nonlocal best
        if len(chosen) + len(alone) - i < best[0]:
            return
        if i == len(alone):
            best = max(best, score(chosen))
            return
        for option in alone[i]:
            if not validator.problems([a for _, a in chosen] + [option]):
                search(i + 1, [*chosen, (instance.queue[i], option)])
        search(i + 1, chosen)

    search(0, [])
    return best


@SMALL
@given(instances(max_appointments=4, max_width=90))
def test_cp_sat_matches_brute_force_on_tiny_batches(instance: Instance) -> None:
    q, c, now, rules = instance.queue, instance.calendars, instance.now, instance.rules
    solved = assign(q, c, now, rules, time_limit=10, workers=2)
    assert solved.status == "OPTIMAL"
    assigned, priority, balance = brute_force(instance)
    assert solved.score.assigned == assigned
    assert (solved.score.priority, -solved.score.balance) == (priority, balance)


# --- the generated week --------------------------------------------------------------------------
@pytest.mark.slow
def test_generated_week_of_500_validates_and_beats_greedy() -> None:
    work = generate_queue(0)
    assert len(work.queue) == 500
    solved = assign(work.queue, work.calendars, work.now, work.rules)
    greedy = greedy_assign(work.queue, work.calendars, work.now, work.rules)
    validator = Validator(work.queue, work.calendars, work.now, work.rules)
    assert validator.problems(solved.assigned) == []
    assert validator.problems(greedy.assigned) == []
    assert solved.status in ("OPTIMAL", "FEASIBLE")  # not the fallback
    assert solved.score.assigned > greedy.score.assigned
    assert solved.bound is not None and solved.objective <= solved.bound
