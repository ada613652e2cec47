"""Replay of synthetic demand through the engine, in-process and in virtual time.

Each tenant is simulated alone (tenants share nothing), as a discrete-event loop over a heap
of journey steps at virtual instants. The tenant's calendars are `engine.calendar`
ResourceCalendars kept incrementally: a hold adds busy time to every resource it takes, a
confirmation swaps it for the booking, a cancellation removes it. Every attempt asks the engine
honestly — `engine.slots.available_starts` for a day's page, `engine.slots.explain` for a hold, and
again for the confirmation (as the service re-checks under its lock) — so the event log is what
the engine decided, one row per customer operation.

Tenants run in worker processes (spawned, so no fork of a threaded parent); the log is ordered
by instant, tenant and the tenant's own order, so it is the same for any number of workers.
"""

from __future__ import annotations

import heapq
import multiprocessing
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from engine.calendar import ResourceCalendar, day_span, instant
from engine.intervals import Interval
from engine.model import Busy, BusyKind, Requirement, Resource, ResourceKind, Rules, Service
from engine.recurrence import Series
from engine.slots import (
    Blackout,
    CapacityReached,
    Conflict,
    LeadTime,
    NoJointAssignment,
    Offered,
    Verdict,
    available_starts,
    explain,
)
from engine.timezones import local_date
from simulation.demand import HOLD_TTL_S, Customers, Period, TenantSpec, customers, tenant
from simulation.journey import (
    ACTIONS,
    Booked,
    Step,
    after_booking,
    after_hold,
    after_view,
    nearest,
    shift_days,
)
from simulation.tables import Row, attempts_frame, resources_frame, working_frame

STRATEGY = "engine"


def engine_rules(spec: TenantSpec) -> Rules:
    return Rules(
        zone=spec.zone,
        min_lead=timedelta(minutes=spec.min_lead_minutes),
        blackout_dates=frozenset(spec.blackout_dates),
        cancel_cutoff=timedelta(minutes=spec.cancel_cutoff_minutes),
        reschedule_cutoff=timedelta(minutes=spec.reschedule_cutoff_minutes),
    )


def engine_services(spec: TenantSpec) -> list[Service]:
    return [
        Service(
            s.key,
            timedelta(minutes=s.duration),
            tuple(
                Requirement(ResourceKind(r.kind), frozenset(r.skills), r.count)
                for r in s.requirements
            ),
            buffer_before=timedelta(minutes=s.buffer_before),
            buffer_after=timedelta(minutes=s.buffer_after),
            step=timedelta(minutes=s.step),
        )
        for s in spec.services
    ]


def shift_anchor(period: Period) -> datetime:
    """DTSTART of every shift: a week before the period, so its first week is complete."""
    return datetime.combine(period.start - timedelta(days=7), datetime.min.time())


def engine_calendars(
    spec: TenantSpec, period: Period, ids: dict[str, str]
) -> dict[str, ResourceCalendar]:
    anchor = shift_anchor(period)
    calendars: dict[str, ResourceCalendar] = {}
    for r in spec.resources:
        rid = ids[r.key]
        resource = Resource(
            rid, ResourceKind(r.kind), spec.zone, frozenset(r.skills), r.daily_capacity
        )
        shifts = [
            Series(
                spec.zone,
                anchor.replace(hour=s.start.hour, minute=s.start.minute),
                timedelta(minutes=s.minutes),
                s.rrule,
            )
            for s in r.shifts
        ]
        calendars[rid] = ResourceCalendar(resource, shifts)
    return calendars


def refusal(verdict: Verdict, layer: str) -> tuple[str, str | None, str]:
    """(outcome, conflict layer, reason) of a verdict other than Offered, as the service would
    answer it; ``layer`` is the protocol layer that asked."""
    match verdict:
        case Conflict(conflicts=conflicts):
            held = all(busy.kind is BusyKind.HOLD for _, busy in conflicts)
            return "conflict", layer, "held" if held else "conflict"
        case NoJointAssignment():
            return "conflict", layer, "no_joint_assignment"
        case CapacityReached():
            return "capacity", None, "capacity_reached"
        case LeadTime():
            return "rejected", None, "lead_time"
        case Blackout():
            return "rejected", None, "blackout"
        case _:
            return "rejected", None, type(verdict).__name__.lower()


@dataclass(slots=True)
class _Hold:
    hold_id: str
    start: int
    entries: list[tuple[ResourceCalendar, Busy]]
    resource_ids: tuple[str, ...]
    live: bool = True


def view_row(wish: int, starts: list[int]) -> Row:
    """The attempt row of a day view: what was wished, and whether anything was offered."""
    outcome = "ok" if starts else "no_slot"
    return (wish, None, None, None, None, None, outcome, None, None if starts else "no_slot")


class TenantReplay:
    """One tenant's demand through the engine. ``run()`` returns its attempt rows."""

    def __init__(self, spec: TenantSpec, period: Period, demand: Customers) -> None:
        self.spec = spec
        self.zone = spec.zone
        self.c = demand
        self.ids = {r.key: f"{spec.name}/{r.key}" for r in spec.resources}
        self.calendars = engine_calendars(spec, period, self.ids)
        self.services = engine_services(spec)
        # Per service, only the calendars some requirement admits — what the service loads
        # for a request too; the engine's answer is the same, found without the others.
        self.relevant = [
            {
                rid: cal
                for rid, cal in self.calendars.items()
                if any(req.admits(cal.resource) for req in service.requirements)
            }
            for service in self.services
        ]
        self.rules = engine_rules(spec)
        self.bookings: list[Booked] = []
        self._booking_busy: dict[str, list[tuple[ResourceCalendar, Busy]]] = {}
        self._holds = 0

    def run(self) -> list[Row]:
        c, zone, rows = self.c, self.zone, []
        heap: list[tuple[int, int, int, int, Any]] = [
            (int(t), i, Step.VIEW, i, (0, int(c.patience[i]))) for i, t in enumerate(c.arrival)
        ]
        heapq.heapify(heap)
        order = len(heap)
        ordinal = 0
        requested = c.requested
        while heap:
            t, _, step, i, data = heapq.heappop(heap)
            k = int(c.service[i])
            service, cals = self.services[k], self.relevant[k]
            now = instant(t)
            result: Row | None
            follow: list[tuple[int, int, Any]] = []
            if step == Step.VIEW:
                offset, retries = data
                wish = (
                    int(requested[i])
                    if offset == 0
                    else shift_days(int(requested[i]), offset, zone)
                )
                starts = self._day(service, cals, wish, now)
                nxt = after_view(c, i, t, bool(starts), offset, retries)
                if nxt is not None and nxt[1] == Step.HOLD:
                    follow.append(
                        (nxt[0], Step.HOLD, (nearest(starts, wish), wish, offset, retries))
                    )
                elif nxt is not None:
                    follow.append((nxt[0], Step.VIEW, (nxt[2], nxt[3])))
                result = view_row(wish, starts)
            elif step == Step.HOLD:
                start, wish, offset, retries = data
                result, hold = self._hold(service, cals, start, wish, now)
                nxt = after_hold(
                    c,
                    i,
                    t,
                    hold is not None,
                    result[6] in ("conflict", "capacity"),
                    offset,
                    retries,
                )
                if nxt is not None and hold is not None:
                    follow.append((t + HOLD_TTL_S, Step.EXPIRE, hold))
                    follow.append((nxt[0], nxt[1], hold))
                elif nxt is not None:
                    follow.append((nxt[0], Step.VIEW, (nxt[2], nxt[3])))
            elif step == Step.CONFIRM:
                result, booked = self._confirm(service, data, now)
                if booked is not None:
                    follow.extend(
                        (at, s, booked) for at, s in after_booking(c, i, t, booked.start, False)
                    )
            elif step == Step.ABANDON:
                hold = data
                outcome = "ok" if hold.live else "expired"
                if hold.live:
                    self._release(hold)
                result = (
                    None,
                    hold.start,
                    hold.start + int(service.duration.total_seconds()),
                    hold.resource_ids,
                    hold.hold_id,
                    None,
                    outcome,
                    None,
                    "abandoned",
                )
                hold.live = False
            elif step == Step.EXPIRE:
                if data.live:
                    self._release(data)
                    data.live = False
                result = None
            elif step == Step.CANCEL:
                result = self._cancel(data, now)
            elif step == Step.RESCHEDULE_VIEW:
                booked = data
                if not booked.active:
                    continue
                wish = shift_days(booked.start, int(c.reschedule_days[i]), zone)
                starts = self._day(service, cals, wish, now)
                if starts:
                    follow.append(
                        (
                            t + int(c.browse_s[i]),
                            Step.RESCHEDULE,
                            (booked, nearest(starts, wish), wish),
                        )
                    )
                result = view_row(wish, starts)
            elif step == Step.RESCHEDULE:
                booked, start, wish = data
                result, moved = self._reschedule(service, cals, booked, start, wish, now)
                if moved is not None:
                    follow.extend(
                        (at, s, moved) for at, s in after_booking(c, i, t, moved.start, True)
                    )
            else:  # Step.NO_SHOW
                if not data.active:
                    continue
                result = (
                    None,
                    data.start,
                    data.end,
                    data.resource_ids,
                    None,
                    data.booking_id,
                    "ok",
                    None,
                    "no_show",
                )
            if result is not None:
                rows.append(
                    (
                        t * 1_000_000,
                        ordinal,
                        i,
                        int(c.service[i]),
                        ACTIONS[step],
                        *result,
                        None,
                        None,
                    )
                )
                ordinal += 1
            for at, s, payload in follow:
                heapq.heappush(heap, (at, order, s, i, payload))
                order += 1
        return rows

    # --- engine calls ------------------------------------------------------------------------
    def _day(
        self, service: Service, cals: dict[str, ResourceCalendar], wish: int, now: datetime
    ) -> list[int]:
        """Bookable starts on the wished local day, as the booking page shows them."""
        lo, hi = day_span(local_date(instant(wish), self.zone), self.zone)
        if hi <= lo:
            return []
        return available_starts(service, cals, Interval(instant(lo), instant(hi)), now, self.rules)

    def _hold(
        self,
        service: Service,
        cals: dict[str, ResourceCalendar],
        start: int,
        wish: int,
        now: datetime,
    ) -> tuple[tuple[Any, ...], _Hold | None]:
        at = instant(start)
        end = start + int(service.duration.total_seconds())
        verdict = explain(service, cals, at, now, self.rules)
        if not isinstance(verdict, Offered):
            outcome, layer, reason = refusal(verdict, "hold")
            return (wish, start, end, None, None, None, outcome, layer, reason), None
        self._holds += 1
        hold_id = f"{self.spec.name}-h{self._holds}"
        busy = Busy(service.footprint(at), hold_id, BusyKind.HOLD)
        rids = tuple(rid for _, rid in verdict.assignment)
        entries = [(self.calendars[rid], busy) for rid in rids]
        for cal, entry in entries:
            cal.add(entry)
        return (wish, start, end, rids, hold_id, None, "ok", None, None), _Hold(
            hold_id, start, entries, rids
        )

    def _release(self, hold: _Hold) -> None:
        for cal, entry in hold.entries:
            cal.remove(entry)

    def _confirm(
        self, service: Service, hold: _Hold, now: datetime
    ) -> tuple[tuple[Any, ...], Booked | None]:
        end = hold.start + int(service.duration.total_seconds())
        if not hold.live:
            return (
                None,
                hold.start,
                end,
                hold.resource_ids,
                hold.hold_id,
                None,
                "expired",
                None,
                "hold_expired",
            ), None
        self._release(hold)
        hold.live = False
        # As under the service's lock: the held resources, re-checked without the hold itself.
        chosen = {rid: self.calendars[rid] for rid in hold.resource_ids}
        verdict = explain(service, chosen, instant(hold.start), now, self.rules)
        if not isinstance(verdict, Offered):
            outcome, layer, reason = refusal(verdict, "lock")
            return (
                None,
                hold.start,
                end,
                hold.resource_ids,
                hold.hold_id,
                None,
                outcome,
                layer,
                reason,
            ), None
        booked = self._book(service, hold.start, hold.resource_ids)
        return (
            None,
            hold.start,
            end,
            hold.resource_ids,
            hold.hold_id,
            booked.booking_id,
            "ok",
            None,
            None,
        ), booked

    def _book(self, service: Service, start: int, rids: tuple[str, ...]) -> Booked:
        at = instant(start)
        booking_id = f"{self.spec.name}-b{len(self.bookings) + 1}"
        busy = Busy(
            service.footprint(at),
            booking_id,
            BusyKind.BOOKING,
            at,
            int(service.duration.total_seconds() // 60),
        )
        entries = [(self.calendars[rid], busy) for rid in rids]
        for cal, entry in entries:
            cal.add(entry)
        booked = Booked(booking_id, start, start + int(service.duration.total_seconds()), rids)
        self.bookings.append(booked)
        self._booking_busy[booking_id] = entries
        return booked

    def _unbook(self, booked: Booked) -> None:
        for cal, entry in self._booking_busy[booked.booking_id]:
            cal.remove(entry)
        booked.active = False

    def _cancel(self, booked: Booked, now: datetime) -> tuple[Any, ...]:
        row = (None, booked.start, booked.end, booked.resource_ids, None, booked.booking_id)
        if now > instant(booked.start) - self.rules.cancel_cutoff:
            return (*row, "rejected", None, "cancel_cutoff")
        self._unbook(booked)
        return (*row, "ok", None, None)

    def _reschedule(
        self,
        service: Service,
        cals: dict[str, ResourceCalendar],
        booked: Booked,
        start: int,
        wish: int,
        now: datetime,
    ) -> tuple[tuple[Any, ...], Booked | None]:
        end = start + int(service.duration.total_seconds())
        if not booked.active:
            return (
                wish,
                start,
                end,
                None,
                None,
                booked.booking_id,
                "rejected",
                None,
                "not_confirmed",
            ), None
        if now > instant(booked.start) - self.rules.reschedule_cutoff:
            return (
                wish,
                start,
                end,
                None,
                None,
                booked.booking_id,
                "rejected",
                None,
                "reschedule_cutoff",
            ), None
        # Atomic, as in the service: the old slot is freed only if the new one can be booked.
        entries = self._booking_busy[booked.booking_id]
        for cal, entry in entries:
            cal.remove(entry)
        verdict = explain(service, cals, instant(start), now, self.rules)
        if not isinstance(verdict, Offered):
            for cal, entry in entries:
                cal.add(entry)
            outcome, layer, reason = refusal(verdict, "lock")
            return (wish, start, end, None, None, booked.booking_id, outcome, layer, reason), None
        booked.active = False
        moved = self._book(service, start, tuple(rid for _, rid in verdict.assignment))
        return (
            wish,
            start,
            end,
            moved.resource_ids,
            None,
            moved.booking_id,
            "ok",
            None,
            None,
        ), moved


# --- a whole run -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TenantResult:
    index: int
    spec: TenantSpec
    attempts: pl.DataFrame
    bookings: pl.DataFrame
    resources: pl.DataFrame
    working: pl.DataFrame


def simulate_tenant(seed: int, index: int, period: Period, run_id: str) -> TenantResult:
    """Draw tenant ``index`` and its customers from ``seed`` and replay them (a worker task)."""
    spec = tenant(seed, index, period)
    replay = TenantReplay(spec, period, customers(seed, spec, period))
    rows = replay.run()
    return TenantResult(
        index,
        spec,
        attempts_frame(rows, spec, STRATEGY),
        bookings_frame(spec, replay.bookings, run_id),
        resources_frame(spec, replay.ids, run_id),
        working_frame(spec, replay.calendars, replay.ids, period, run_id),
    )


def bookings_frame(spec: TenantSpec, bookings: list[Booked], run_id: str) -> pl.DataFrame:
    """Bookings as they stand at the end, one row per booked resource."""
    rows = [
        (b.booking_id, rid, b.start, b.end, "active" if b.active else "cancelled")
        for b in bookings
        for rid in b.resource_ids
    ]
    raw = pl.DataFrame(
        rows,
        schema={
            "booking_id": pl.String,
            "resource_id": pl.String,
            "a": pl.Int64,
            "b": pl.Int64,
            "status": pl.String,
        },
        orient="row",
    )
    return raw.select(
        pl.lit(run_id).alias("run_id"),
        pl.lit(spec.name).alias("tenant"),
        "booking_id",
        "resource_id",
        pl.lit(spec.zone).alias("zone"),
        (pl.col("a") * 1_000_000).cast(pl.Datetime("us", "UTC")).alias("start"),
        (pl.col("b") * 1_000_000).cast(pl.Datetime("us", "UTC")).alias("end"),
        "status",
    )


def simulate(
    seed: int,
    tenants: int,
    period: Period,
    run_id: str,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Iterator[TenantResult]:
    """Every tenant's result, in tenant order. With ``workers`` > 1 the tenants are spread
    over spawned processes, largest first so the heavy tail does not finish last."""
    if workers <= 1:
        for index in range(tenants):
            result = simulate_tenant(seed, index, period, run_id)
            if progress:
                progress(1)
            yield result
        return
    sizes = {i: tenant(seed, i, period).customers_per_day for i in range(tenants)}
    order = sorted(range(tenants), key=lambda i: (-sizes[i], i))
    done: dict[int, TenantResult] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(simulate_tenant, seed, i, period, run_id) for i in order]
        for future in futures:
            result = future.result()
            done[result.index] = result
            if progress:
                progress(1)
    for index in range(tenants):
        yield done[index]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started
