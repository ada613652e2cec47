"""Booking use cases: availability, holds, confirmation, cancel, reschedule, series.

The three layers of DESIGN.md, none trusted alone:
1. a hold in Redis (`service.holds`) makes contenders see the slot as taken;
2. confirmation locks every resource with `pg_advisory_xact_lock` in one global order, then
   re-reads the resources' calendars *under the lock* and asks the engine again (hours,
   conflicts, capacity, rules, specialization) before inserting;
3. the exclusion constraint on `booking_resources` refuses any overlap that slipped through,
   and the violation becomes a 409.

`BookingService(strategy=...)` exists for the contention study (`slotwise loadtest
contention`); the default, "holds", is the protocol above. "pessimistic" skips layer 1 and
locks the resources' rows `FOR UPDATE` (in id order) instead of advisory locks; "constraint"
skips layers 1 and 2 and leaves every race to the exclusion constraint. Both still never
double-book (the constraint stands), but under "constraint" the daily capacity and business
rules are checked without a lock, so concurrent bookings can exceed a daily capacity.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Literal, TypeVar, get_args

import psycopg

from engine.calendar import ResourceCalendar, seconds
from engine.intervals import Interval
from engine.model import Busy, BusyKind, Requirement, Resource, ResourceKind, Rules, Service
from engine.recurrence import Series
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
    Verdict,
    availability,
    explain,
    free_candidates,
    match,
)
from engine.timezones import local_date, to_local
from service import repository as repo
from service.audit_batch import BatchedAudit
from service.auth import Caller
from service.db import (
    Conn,
    Database,
    Idempotency,
    acknowledge,
    audit,
    audit_event,
    begin_claim,
    claim,
    remember,
    stored_answer,
    to_json,
)
from service.errors import (
    CapacityExceeded,
    InvalidInput,
    NotFound,
    RuleViolation,
    ServiceError,
    SlotConflict,
    SlotUnavailable,
)
from service.holds import (
    Claim,
    Hold,
    HoldConflict,
    HoldStore,
    HoldStoreDown,
    HoldTokens,
    new_nonce,
)
from service.singleflight import SingleFlight

log = logging.getLogger(__name__)
T = TypeVar("T")

Assignment = tuple[tuple[int, str], ...]  # (requirement index, resource id)

BookingStrategy = Literal["holds", "pessimistic", "constraint"]
STRATEGIES: Final[tuple[BookingStrategy, ...]] = get_args(BookingStrategy)


def strategy_from(name: str) -> BookingStrategy:
    """`name` as a booking strategy, or a ValueError naming the valid ones."""
    for strategy in STRATEGIES:
        if strategy == name:
            return strategy
    raise ValueError(f"booking strategy {name!r}: expected one of {', '.join(STRATEGIES)}")


@dataclass(frozen=True, slots=True)
class Limits:
    hold_ttl: timedelta = timedelta(minutes=5)
    max_hold_ttl: timedelta = timedelta(minutes=30)
    max_window: timedelta = timedelta(days=62)
    series_horizon: timedelta = timedelta(days=180)
    max_series_occurrences: int = 400
    replan_attempts: int = 3
    # How long a hold outlives its confirmation (see `_linger`).
    booked_hold_linger: timedelta = timedelta(seconds=60)


# How long a plan made inside a transaction waits for Valkey's live holds (see `plan`).
IN_TRANSACTION_HOLDS_S: Final = 0.25


class _StalePlan(Exception):
    """Resources picked from a snapshot were taken before the locks: plan again."""


def iso(instant: datetime) -> str:
    """An instant as the API writes one: UTC, 'Z', microseconds only when there are some —
    msgspec's form (Litestar's too), and far quicker than isoformat's."""
    return to_json(instant.astimezone(UTC))[1:-1]


def describe(verdict: Verdict) -> dict[str, Any]:
    """A verdict as JSON: `reason` is stable and machine-readable."""
    match verdict:
        case Offered(start, end, assignment):
            return {
                "reason": "available",
                "start": iso(start),
                "end": iso(end),
                "resources": [{"requirement": i, "resource_id": r} for i, r in assignment],
            }
        case LeadTime(earliest):
            return {"reason": "lead_time", "earliest": iso(earliest)}
        case BeyondMaxAdvance(latest):
            return {"reason": "max_advance", "latest": iso(latest)}
        case Blackout(day):
            return {"reason": "blackout", "date": day.isoformat()}
        case OffGrid(step):
            return {"reason": "off_grid", "step_minutes": int(step.total_seconds() // 60)}
        case NoQualifiedResource(requirement, detail):
            return {"reason": "no_qualified_resource", "requirement": requirement, "detail": detail}
        case OutsideHours(requirement, resource_ids):
            return {
                "reason": "outside_hours",
                "requirement": requirement,
                "resource_ids": list(resource_ids),
            }
        case Conflict(requirement, conflicts):
            return {
                "reason": "conflict",
                "requirement": requirement,
                "conflicts": [_busy_json(rid, busy) for rid, busy in conflicts],
            }
        case CapacityReached(requirement, resource_days):
            return {
                "reason": "capacity_reached",
                "requirement": requirement,
                "resources": [{"resource_id": r, "date": d.isoformat()} for r, d in resource_days],
            }
        case NoJointAssignment(requirements):
            return {"reason": "no_joint_assignment", "requirements": list(requirements)}


def _busy_json(resource_id: str, busy: Busy) -> dict[str, Any]:
    return {
        "resource_id": resource_id,
        "kind": busy.kind.value,
        "ref": busy.ref if busy.kind is not BusyKind.HOLD else None,
        "start": iso(busy.interval.start),
        "end": iso(busy.interval.end),
    }


def refuse(verdict: Verdict, what: str = "the slot") -> ServiceError:
    """The error for a verdict that is not `Offered`."""
    body = describe(verdict)
    detail = f"{what} is not available: {body['reason'].replace('_', ' ')}"
    match verdict:
        case Conflict() | NoJointAssignment():
            return SlotConflict(detail, why=body)
        case CapacityReached():
            return CapacityExceeded(detail, why=body)
        case LeadTime() | BeyondMaxAdvance() | Blackout():
            return RuleViolation(detail, why=body)
        case _:
            return SlotUnavailable(detail, why=body)


def pinned_to(service: Service, assignment: Assignment) -> Service:
    """The service with each requirement restricted to exactly the assigned resources."""
    chosen: dict[int, set[str]] = {}
    for index, rid in assignment:
        chosen.setdefault(index, set()).add(rid)
    reqs = tuple(
        Requirement(r.kind, r.skills, r.count, frozenset(chosen.get(i, set())))
        for i, r in enumerate(service.requirements)
    )
    return replace(service, requirements=reqs)


# Per worker, the window each hold's check read (`calendar_window`'s rows about the resources
# held), so that confirming it can skip reading it again: the confirmation mostly comes on the
# hold's kept-alive connection, so to the same worker. Oldest first out; a few rows each.
REMEMBERED_HOLD_READS = 10_000


class BookingService:
    """The booking use cases; the HTTP layer only parses, calls one of these, and renders."""

    def __init__(
        self,
        db: Database,
        holds: HoldStore,
        tokens: HoldTokens,
        clock: Callable[[], datetime],
        batched_audit: BatchedAudit,
        limits: Limits = Limits(),
        strategy: BookingStrategy = "holds",
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"booking strategy must be one of {', '.join(STRATEGIES)}")
        self.db = db
        self.holds = holds
        self.tokens = tokens
        self.clock = clock
        self.limits = limits
        self.strategy = strategy
        self.catalogs = repo.CatalogCache()
        self.batched_audit = batched_audit
        self._catalog_loads: SingleFlight[str, repo.Catalog] = SingleFlight()
        self._hold_reads: OrderedDict[tuple[str, str], list[repo.WindowRow]] = OrderedDict()

    # --- reads ---------------------------------------------------------------------------------
    async def availability(
        self,
        caller: Caller,
        service_id: str,
        window: Interval,
        zone: str | None,
        pins: Sequence[str],
        request_id: str | None,
    ) -> dict[str, Any]:
        caller.require("read")
        if window.duration > self.limits.max_window:
            raise InvalidInput(
                f"the window may span at most {self.limits.max_window.days} days", field="to"
            )
        now = self.clock()
        async with self.db.transaction(caller.tenant) as conn:

            async def reads(
                catalog: repo.Catalog,
            ) -> tuple[
                int, tuple[repo.ServiceRecord, Service, dict[str, ResourceCalendar], Interval]
            ]:
                record = catalog.service(service_id)
                svc = record.service
                # Footprints of starts near `to` reach past it by the duration and buffers.
                span = window.padded(svc.buffer_before, svc.duration + svc.buffer_after)
                version, service, calendars = await self.calendars_for(
                    conn, catalog, svc, span, pins, spans_only=True
                )
                return version, (record, service, calendars, span)

            _, (record, service, calendars, span) = await self.catalogs.read(
                conn, caller.tenant, reads
            )
            await audit(
                conn,
                caller,
                "availability.read",
                "service",
                service_id,
                request_id,
                {"from": iso(window.start), "to": iso(window.end)},
            )
        holds_seen = await self.add_live_holds(caller.tenant, calendars, span)
        slots = availability(service, calendars, window, now, record.rules)
        display = zone or record.rules.zone
        return {
            "service_id": service_id,
            "zone": display,
            "holds_considered": holds_seen,
            "slots": [
                {
                    "start": iso(s.start),
                    "end": iso(s.end),
                    "local_start": to_local(s.start, display).isoformat(timespec="minutes"),
                }
                for s in slots
            ],
        }

    async def why_not(
        self,
        caller: Caller,
        service_id: str,
        start: datetime,
        pins: Sequence[str],
        request_id: str | None,
    ) -> dict[str, Any]:
        caller.require("read")
        now = self.clock()
        record, service, calendars, _ = await self._one_start(
            caller, service_id, start, pins, "availability.explain", request_id
        )
        await self.add_live_holds(caller.tenant, calendars, record.service.footprint(start))
        return describe(explain(service, calendars, start, now, record.rules))

    # --- holds ---------------------------------------------------------------------------------
    async def create_hold(
        self,
        caller: Caller,
        service_id: str,
        start: datetime,
        pins: Sequence[str],
        ttl: timedelta | None,
        idem: Idempotency | None,
        request_id: str | None,
    ) -> dict[str, Any]:
        """Hold ``start`` on every resource it needs. With an Idempotency-Key, the hold's name
        in Redis derives from the key and request, so a retry re-takes the same hold (the
        acquire script ignores a hold's own claims) rather than colliding with it."""
        caller.require("book")
        ttl = self._ttl(ttl)
        now = self.clock()
        nonce = new_nonce() if idem is None else idem_nonce(caller, idem)
        taken = await self._hold_first(caller, service_id, start, pins, nonce, ttl, request_id)
        try:
            record, service, calendars, seen = await self._one_start(
                caller, service_id, start, pins, "hold.create", request_id
            )
            verdict, degraded = await self._plan_and_hold(
                caller.tenant, nonce, service, calendars, start, now, record.rules, ttl, taken
            )
        except BaseException:
            # An Idempotency-Key's nonce may name the hold of an earlier, successful attempt
            # of this request: leave it to expire rather than release someone's live hold.
            if taken is not None and idem is None:
                await self._release_claims(caller.tenant, nonce, taken)
            raise
        hold = Hold(
            caller.tenant,
            caller.key_id,
            nonce,
            service_id,
            start,
            verdict.assignment,
            now + ttl,
            degraded,
        )
        if self.strategy == "holds":  # what `_book_held_at_once` starts from
            held = {rid for _, rid in verdict.assignment}
            self._hold_reads[caller.tenant, nonce] = repo.rows_about(seen, held)
            if len(self._hold_reads) > REMEMBERED_HOLD_READS:
                # popitem, not `del d[next(iter(d))]`: a plain dict's first key is found by
                # walking past every slot deleted before it, which grows with the churn.
                self._hold_reads.popitem(last=False)
        return self._hold_json(hold)

    def _ttl(self, ttl: timedelta | None) -> timedelta:
        ttl = ttl or self.limits.hold_ttl
        if not timedelta(seconds=5) <= ttl <= self.limits.max_hold_ttl:
            raise InvalidInput(
                "ttl_seconds must be between 5 and"
                f" {int(self.limits.max_hold_ttl.total_seconds())}",
                field="ttl_seconds",
            )
        return ttl

    async def _one_start(
        self,
        caller: Caller,
        service_id: str,
        start: datetime,
        pins: Sequence[str],
        action: str,
        request_id: str | None,
    ) -> tuple[repo.ServiceRecord, Service, dict[str, ResourceCalendar], list[repo.WindowRow]]:
        """The service and its candidates' calendars around one start, read and audited, and
        the rows they were read from."""

        async def reads(
            conn: Conn, catalog: repo.Catalog
        ) -> tuple[
            int,
            tuple[repo.ServiceRecord, Service, dict[str, ResourceCalendar], list[repo.WindowRow]],
        ]:
            record = catalog.service(service_id)
            service, resources = candidates(catalog, record.service, pins)
            rows = await repo.read_window(conn, catalog, resources, record.service.footprint(start))
            version, calendars = repo.calendars_of(catalog, resources, rows)
            return version, (record, service, calendars, rows)

        record, service, calendars, seen = await self._read_current(caller.tenant, reads)
        # The read writes nothing: its event goes through the batched writer, so it needs no
        # transaction (see `_read_current`).
        await self.batched_audit.append(
            caller, action, "service", service_id, request_id, {"start": iso(start)}
        )
        return record, service, calendars, seen

    async def _read_current(
        self, tenant_id: str, reads: Callable[[Conn, repo.Catalog], Awaitable[tuple[int, T]]]
    ) -> T:
        """The result of ``reads`` against the current catalog, for a request that only reads.
        When the cached catalog proves current, ``reads`` is one statement outside any
        transaction: `load_calendars` sets the tenant itself and returns the catalog version it
        saw, which spares a check of the slot four statements (BEGIN, the tenant, the version,
        COMMIT), most of its cost. So ``reads`` must be that one statement. Otherwise (nothing
        cached, stale, or a refusal that may be an artefact of a stale catalog: then checked,
        at the price of a second attempt) it runs again in a transaction that reloads it."""
        cached = self.catalogs.cached(tenant_id)
        if cached is not None:
            async with self.db.connection() as conn:
                try:
                    version, result = await reads(conn, cached)
                except ServiceError:
                    version = None
            if version == cached.version:
                return result
        async with self.db.transaction(tenant_id) as conn:
            _, result = await reads(conn, await self.catalogs.get(conn, tenant_id))
        return result

    async def _plan_and_hold(
        self,
        tenant_id: str,
        nonce: str,
        service: Service,
        calendars: Mapping[str, ResourceCalendar],
        start: datetime,
        now: datetime,
        rules: Rules,
        ttl: timedelta,
        taken: list[Claim] | None = None,
    ) -> tuple[Offered, bool]:
        """Choose resources and take the hold: (verdict, degraded).

        The acquire script refuses any overlap with live holds atomically, so other callers'
        holds are read only after a clash, to re-plan around them once — two Redis round
        trips saved on the common path. ``taken``: claims `_hold_first` already holds under
        ``nonce``; the plan keeps them if it claims the same, or gives them back first."""
        considered_holds = False
        while True:
            verdict = explain(service, calendars, start, now, rules)
            if not isinstance(verdict, Offered):
                raise refuse(verdict)
            if self.strategy != "holds":
                return verdict, True  # layer 1 off by configuration: a non-exclusive hold
            footprint = service.footprint(start)
            claims = claims_over(footprint, (rid for _, rid in verdict.assignment))
            if taken is not None:
                if claims == taken:
                    return verdict, False  # held already, before the database was read
                # The catalog changed under the cached copy `_hold_first` used: start over.
                await self._release_claims(tenant_id, nonce, taken)
                taken = None
            try:
                clash = await self.holds.acquire(tenant_id, nonce, claims, ttl)
            except HoldStoreDown:
                return verdict, True  # degraded: layers 2 and 3 still decide
            if clash is None:
                return verdict, False
            if considered_holds:
                raise held_by_another(clash)
            considered_holds = True
            if not await self.add_live_holds(tenant_id, calendars, footprint):
                return verdict, True

    async def _hold_first(
        self,
        caller: Caller,
        service_id: str,
        start: datetime,
        pins: Sequence[str],
        nonce: str,
        ttl: timedelta,
        request_id: str | None,
    ) -> list[Claim] | None:
        """Layer 1 before any database read, when the pins fix every resource the slot needs:
        take the hold in Valkey first. The first caller of a rush on a hot slot gets it (and
        then goes the full way, which keeps that hold if it plans the same and checks the slot in
        PostgreSQL); every later one is refused here at the cost of a Valkey round trip and a
        share of a batched audit insert — not a transaction each. Returns the claims taken, or
        None where the full path must decide alone (pins that leave a choice, Valkey down, a
        catalog changed meanwhile)."""
        if not pins or self.strategy != "holds":  # the study's other strategies: no layer 1
            return None
        catalog = await self._catalog_for_holds(caller.tenant)
        record = catalog.services.get(service_id)
        if record is None:
            return None
        assignment = fixed_assignment_of(catalog, service_id, pins)
        if assignment is None:
            return None
        claims = claims_over(record.service.footprint(start), (rid for _, rid in assignment))
        try:
            clash = await self.holds.acquire(caller.tenant, nonce, claims, ttl)
        except HoldStoreDown:
            return None
        if clash is None:
            return claims
        version = await self.batched_audit.append(
            caller,
            "hold.create",
            "service",
            service_id,
            request_id,
            {"start": iso(start), "refused": "held"},
        )
        if version == catalog.version:
            raise held_by_another(clash)
        return None

    async def _catalog_for_holds(self, tenant_id: str) -> repo.Catalog:
        """The cached catalog (checked later: by the batched audit's statement for a refusal,
        by the slot's read for the full path), loaded once per tenant and worker however many
        requests of a burst ask at the same moment."""
        cached = self.catalogs.cached(tenant_id)
        if cached is not None:
            return cached
        return await self._catalog_loads.call(tenant_id, lambda: self._load_catalog(tenant_id))

    async def _load_catalog(self, tenant_id: str) -> repo.Catalog:
        async with self.db.transaction(tenant_id) as conn:
            return await self.catalogs.get(conn, tenant_id)

    async def _release_claims(self, tenant_id: str, nonce: str, claims: list[Claim]) -> None:
        try:
            await self.holds.release(tenant_id, nonce, claims)
        except HoldStoreDown:
            log.warning("hold %s not released: the hold store is down (it will expire)", nonce)

    async def release_hold(self, caller: Caller, hold_id: str, request_id: str | None) -> None:
        caller.require("book")
        hold = self.tokens.read(hold_id, caller.tenant, caller.key_id, self.clock())
        await self._release(
            hold, await self._footprint_of(caller, hold, "hold.release", request_id)
        )

    async def extend_hold(
        self, caller: Caller, hold_id: str, ttl: timedelta | None, request_id: str | None
    ) -> dict[str, Any]:
        caller.require("book")
        ttl = self._ttl(ttl)
        now = self.clock()
        hold = self.tokens.read(hold_id, caller.tenant, caller.key_id, now)
        footprint = await self._footprint_of(caller, hold, "hold.extend", request_id)
        if not hold.degraded:
            try:
                alive = await self.holds.extend(
                    caller.tenant, hold.nonce, _claims(hold, footprint), ttl
                )
            except HoldStoreDown:
                alive, hold = True, replace(hold, degraded=True)
            if not alive:
                raise SlotConflict("the hold is no longer live", why={"reason": "hold_gone"})
        return self._hold_json(replace(hold, expires_at=now + ttl))

    def _hold_json(self, hold: Hold) -> dict[str, Any]:
        return {
            "id": self.tokens.issue(hold),
            "service_id": hold.service_id,
            "start": iso(hold.start),
            "expires_at": iso(hold.expires_at),
            "resources": [{"requirement": i, "resource_id": r} for i, r in hold.resources],
            "degraded": hold.degraded,
        }

    async def _footprint_of(
        self, caller: Caller, hold: Hold, action: str, request_id: str | None
    ) -> Interval:
        """The hold's buffered footprint, from the current catalog; ``action`` is audited
        (batched, like every hold's: see `_one_start`)."""
        async with self.db.transaction(hold.tenant_id) as conn:
            catalog = await self.catalogs.get(conn, hold.tenant_id)
            record = catalog.service(hold.service_id)
        await self.batched_audit.append(
            caller,
            action,
            "service",
            hold.service_id,
            request_id,
            {"start": iso(hold.start), "hold": hold.nonce},
        )
        return record.service.footprint(hold.start)

    async def _linger(self, hold: Hold, footprint: Interval) -> None:
        """A confirmed hold stays a little while instead of being released: a hot slot's
        booking is followed by a rush of callers who have not seen it yet, and the lingering
        hold refuses them in Valkey (`_hold_first`) rather than each costing a database read.
        Cancelling or rescheduling the booking releases it at once (`_release_lingering`)."""
        if hold.degraded:
            return
        try:
            await self.holds.keep(
                hold.tenant_id, hold.nonce, _claims(hold, footprint), self.limits.booked_hold_linger
            )
        except HoldStoreDown:
            log.warning("hold %s kept its own expiry: the hold store is down", hold.nonce)

    async def _release_lingering(
        self, tenant_id: str, booking: Mapping[str, Any], record: repo.ServiceRecord
    ) -> None:
        """Release the hold a booking was confirmed from, if it may still linger."""
        if booking["hold_nonce"] is None:
            return
        footprint = record.service.footprint(booking["starts_at"])
        claims = claims_over(footprint, (r["resource_id"] for r in booking["resources"]))
        await self._release_claims(tenant_id, booking["hold_nonce"], claims)

    async def _release(self, hold: Hold, footprint: Interval) -> None:
        """Release the hold in Valkey, a degraded one too: its acquire may have run there after
        all, its answer lost to a timeout, and such a hold would refuse everyone else until
        its TTL ran out (releasing what is not there changes nothing)."""
        await self._release_claims(hold.tenant_id, hold.nonce, _claims(hold, footprint))

    # --- bookings ------------------------------------------------------------------------------
    async def confirm(
        self,
        caller: Caller,
        *,
        hold_id: str | None,
        service_id: str | None,
        start: datetime | None,
        pins: Sequence[str],
        customer: str,
        idem: Idempotency | None,
        request_id: str | None,
    ) -> tuple[int, dict[str, Any]]:
        """Book a held slot (``hold_id``) or a slot directly (``service_id`` + ``start``)."""
        caller.require("book")
        now = self.clock()
        if hold_id is not None:
            hold = self.tokens.read(hold_id, caller.tenant, caller.key_id, now)
            record, answer = await self._confirm_held(caller, hold, customer, now, idem, request_id)
            await self._linger(hold, record.service.footprint(hold.start))
            return answer
        if service_id is None or start is None:
            raise InvalidInput("send either hold_id, or service_id and start", field="hold_id")
        return await self._confirm_direct(
            caller, service_id, start, pins, customer, now, idem, request_id
        )

    async def _confirm_held(
        self,
        caller: Caller,
        hold: Hold,
        customer: str,
        now: datetime,
        idem: Idempotency | None,
        request_id: str | None,
    ) -> tuple[repo.ServiceRecord, tuple[int, Any]]:
        """Book what a hold names: in one statement (`_book_held_at_once`) where it can, else
        in a transaction. Its resources are known up front, so there the idempotency
        claim, the catalog check, the locks and the calendars read under them all share one
        round trip; the insert is the second, the audit row and COMMIT the third."""
        booked = await self._book_held_at_once(caller, hold, customer, now, idem, request_id)
        if booked is not None:
            return booked
        async with self.db.transaction(caller.tenant) as conn:
            pending = await begin_claim(conn, caller.tenant, idem)

            async def locked(
                catalog: repo.Catalog,
            ) -> tuple[int, tuple[repo.ServiceRecord, dict[str, ResourceCalendar]]]:
                record = catalog.service(hold.service_id)
                version, calendars = await self.locked_calendars(
                    conn, catalog, record, hold.start, hold.resources, exclude=()
                )
                return version, (record, calendars)

            _, (record, calendars) = await self.catalogs.read(conn, caller.tenant, locked)
            replay = await pending.replay()
            if replay is not None:
                return record, replay
            booking, created_at = await self.book_checked(
                conn,
                caller,
                record,
                calendars,
                hold.start,
                hold.resources,
                now,
                customer,
                hold_nonce=None if hold.degraded else hold.nonce,
            )
            body = await self._acknowledge(
                conn, caller, booking, created_at, idem, request_id, held=True
            )
            return record, (201, body)

    async def _book_held_at_once(
        self,
        caller: Caller,
        hold: Hold,
        customer: str,
        now: datetime,
        idem: Idempotency | None,
        request_id: str | None,
    ) -> tuple[repo.ServiceRecord, tuple[int, Any]] | None:
        """The common confirmation in one statement outside any transaction, where the
        transaction takes seven (most of a confirmation's cost is per statement): the engine's
        verdict on the hold's window as read without locks, then `book_window` (migration
        0010), which books only if under the locks the window still reads the same — so the
        verdict stands as if it had been reached under them. The read is the hold's own
        check's, which this worker remembers if the hold was taken here (the usual case: the
        client's kept-alive connection); else, or if it no longer holds, the window is read
        again (a statement more) for one more try. None where the transaction must decide: no
        current cached catalog, the study's other strategies (their layer 2 is not advisory
        locks), a refusal (it may be this very request's earlier attempt, which the
        transaction replays from its Idempotency-Key), and a window changed between the read
        and the locks."""
        catalog = self.catalogs.cached(caller.tenant)
        if catalog is None or self.strategy != "holds":
            return None
        record = catalog.services.get(hold.service_id)
        if record is None:
            return None
        service = pinned_to(record.service, hold.resources)
        resources = catalog.resources_for(service, [rid for _, rid in hold.resources])
        footprint = service.footprint(hold.start)
        reads: list[list[repo.WindowRow] | None] = [None]  # None: read the window now
        remembered = self._hold_reads.pop((caller.tenant, hold.nonce), None)
        if remembered is not None:
            reads.insert(0, remembered)
        async with self.db.connection() as conn:
            for seen in reads:
                if seen is None:
                    seen = await repo.read_window(conn, catalog, resources, footprint)
                answer = await self._book_as_seen(
                    conn,
                    caller,
                    catalog,
                    record,
                    service,
                    resources,
                    hold,
                    seen,
                    customer,
                    now,
                    idem,
                    request_id,
                )
                if answer is not None:
                    return record, answer
        return None

    async def _book_as_seen(
        self,
        conn: Conn,
        caller: Caller,
        catalog: repo.Catalog,
        record: repo.ServiceRecord,
        service: Service,
        resources: Mapping[str, Resource],
        hold: Hold,
        seen: list[repo.WindowRow],
        customer: str,
        now: datetime,
        idem: Idempotency | None,
        request_id: str | None,
    ) -> tuple[int, Any] | None:
        """`book_window` of ``hold`` (``service`` pinned to it) if the engine offers it over
        the window read as ``seen`` and the cached ``catalog`` is the one it saw: the answer,
        or None (see `_book_held_at_once`)."""
        version, calendars = repo.calendars_of(catalog, resources, seen)
        if version != catalog.version:
            return None
        verdict = explain(service, calendars, hold.start, now, record.rules)
        if not isinstance(verdict, Offered):
            return None
        booking = _new_booking(
            record,
            calendars,
            hold.start,
            verdict.assignment,
            customer,
            caller.key_id,
            hold_nonce=None if hold.degraded else hold.nonce,
        )
        # `created_at` is the statement's: `book_window` sets it in the answer it stores.
        answer = _booking_json(repo.inserted_row(booking, created_at=None))
        event = audit_event(
            caller,
            "booking.create",
            "booking",
            booking.id,
            request_id,
            {"start": iso(booking.start), "hold": True},
        )
        with _violations_as_conflicts():
            row = await repo.book_window(
                conn,
                catalog,
                resources,
                service.footprint(hold.start),
                seen,
                booking,
                (idem.key, idem.fingerprint) if idem is not None else None,
                answer,
                event,
            )
        if row is not None and row["outcome"] != "replay":
            return (201, row["response"]) if row["outcome"] == "booked" else None
        assert idem is not None, "a replay answers a claim of an Idempotency-Key"
        return stored_answer(idem, row)

    async def _confirm_direct(
        self,
        caller: Caller,
        service_id: str,
        start: datetime,
        pins: Sequence[str],
        customer: str,
        now: datetime,
        idem: Idempotency | None,
        request_id: str | None,
    ) -> tuple[int, Any]:
        """Book a slot without a hold. Resources are picked from a snapshot; if a concurrent
        booking took them before our locks, the whole transaction is re-planned from a fresh
        snapshot (never by taking more locks mid-transaction, which could deadlock)."""
        attempts = self.limits.replan_attempts
        for attempt in range(1, attempts + 1):
            try:
                async with self.db.transaction(caller.tenant) as conn:
                    pending = await begin_claim(conn, caller.tenant, idem)
                    catalog = await self.catalogs.get(conn, caller.tenant)
                    replay = await pending.replay()
                    if replay is not None:
                        return replay
                    record = catalog.service(service_id)
                    chosen = await self.plan(conn, caller.tenant, catalog, record, start, pins, now)
                    booking, created_at = await self.book_locked(
                        conn,
                        caller,
                        catalog,
                        record,
                        start,
                        chosen,
                        now,
                        customer,
                        exclude=(),
                        replan=attempt < attempts,
                    )
                    body = await self._acknowledge(
                        conn, caller, booking, created_at, idem, request_id, held=False
                    )
                    return 201, body
            except _StalePlan:
                continue
        raise AssertionError("the last attempt raises instead of re-planning")

    async def _acknowledge(
        self,
        conn: Conn,
        caller: Caller,
        booking: repo.NewBooking,
        created_at: datetime,
        idem: Idempotency | None,
        request_id: str | None,
        *,
        held: bool,
    ) -> dict[str, Any]:
        """The 201 body of a booking just inserted, kept for its Idempotency-Key, audited."""
        body = _booking_json(repo.inserted_row(booking, created_at))
        await acknowledge(
            conn,
            caller,
            idem,
            (201, body),
            "booking.create",
            "booking",
            booking.id,
            request_id,
            {"start": iso(booking.start), "hold": held},
        )
        return body

    async def plan(
        self,
        conn: Conn,
        tenant_id: str,
        catalog: repo.Catalog,
        record: repo.ServiceRecord,
        start: datetime,
        pins: Sequence[str],
        now: datetime,
        exclude: Sequence[str] = (),
        own_holds: Collection[str] = (),
    ) -> Assignment:
        """Pick resources for a booking without a hold of its own (a direct booking, a
        reschedule, a queue assignment) from a snapshot, re-checked under the lock. Live holds
        count as busy, the caller's own too (a held slot is booked by confirming its hold):
        such a booking does not take a slot someone is in the middle of booking. Holds named
        in ``own_holds`` belong to the booking itself (a rescheduled booking's kept hold, a
        queue entry's offer)."""
        footprint = record.service.footprint(start)
        _, service, calendars = await self.calendars_for(
            conn, catalog, record.service, footprint, pins, exclude
        )
        # This runs inside a transaction: a slow Valkey must not keep a PostgreSQL connection
        # (and the locks taken so far) waiting. Past the deadline the plan degrades to layers
        # 2 and 3, as with Valkey down.
        await self.add_live_holds(
            tenant_id, calendars, footprint, ignore=own_holds, within_s=IN_TRANSACTION_HOLDS_S
        )
        verdict = explain(service, calendars, start, now, record.rules)
        if not isinstance(verdict, Offered):
            raise refuse(verdict)
        return verdict.assignment

    async def book_locked(
        self,
        conn: Conn,
        caller: Caller,
        catalog: repo.Catalog,
        record: repo.ServiceRecord,
        start: datetime,
        assignment: Assignment,
        now: datetime,
        customer: str,
        exclude: Sequence[str],
        rescheduled_from: str | None = None,
        replan: bool = False,
    ) -> tuple[repo.NewBooking, datetime]:
        """Lock the assigned resources, re-check everything under the lock, insert: the
        booking and its `created_at` (see `book_checked` for ``replan``)."""
        _, calendars = await self.locked_calendars(
            conn, catalog, record, start, assignment, exclude
        )
        return await self.book_checked(
            conn,
            caller,
            record,
            calendars,
            start,
            assignment,
            now,
            customer,
            rescheduled_from,
            replan=replan,
        )

    async def locked_calendars(
        self,
        conn: Conn,
        catalog: repo.Catalog,
        record: repo.ServiceRecord,
        start: datetime,
        assignment: Assignment,
        exclude: Sequence[str],
    ) -> tuple[int, dict[str, ResourceCalendar]]:
        """Lock the assigned resources, then read their calendars (and the catalog version,
        see `load_calendars`): under the lock, so no booking of theirs can commit between this
        read and our insert (see `locks_for_read`)."""
        resource_ids = [rid for _, rid in assignment]
        service = pinned_to(record.service, assignment)
        resources = catalog.resources_for(service, resource_ids)
        return await repo.load_calendars(
            conn,
            catalog,
            resources,
            service.footprint(start),
            exclude,
            lock=await self.locks_for_read(conn, resource_ids),
        )

    async def book_checked(
        self,
        conn: Conn,
        caller: Caller,
        record: repo.ServiceRecord,
        calendars: Mapping[str, ResourceCalendar],
        start: datetime,
        assignment: Assignment,
        now: datetime,
        customer: str,
        rescheduled_from: str | None = None,
        replan: bool = False,
        hold_nonce: str | None = None,
    ) -> tuple[repo.NewBooking, datetime]:
        """Ask the engine again over calendars read under the lock, then insert: the booking
        and its `created_at`. With ``replan``, a refusal means "the snapshot was stale": the
        caller rolls back and plans again instead of answering 409."""
        service = pinned_to(record.service, assignment)
        verdict = explain(service, calendars, start, now, record.rules)
        if not isinstance(verdict, Offered):
            raise _StalePlan() if replan else refuse(verdict)
        booking = _new_booking(
            record,
            calendars,
            start,
            verdict.assignment,
            customer,
            caller.key_id,
            rescheduled_from,
            hold_nonce,
        )
        return booking, await self._insert(conn, caller.tenant, [booking])

    async def locks_for_read(self, conn: Conn, resource_ids: Sequence[str]) -> Sequence[str]:
        """Layer 2 for a read of ``resource_ids``' calendars that must happen under it: the
        resources whose advisory locks the read's own statement takes ("holds": a statement
        less), after taking the study's other strategies' locks (or none) here."""
        if self.strategy == "holds":
            return resource_ids
        await self.lock(conn, resource_ids)
        return ()

    async def lock(self, conn: Conn, resource_ids: Sequence[str]) -> None:
        """Layer 2 as the strategy has it: advisory locks ("holds"), the resources' rows
        `FOR UPDATE` ("pessimistic"), or nothing ("constraint")."""
        match self.strategy:
            case "holds":
                await repo.lock_resources(conn, resource_ids)
            case "pessimistic":
                # ORDER BY: rows are locked in the order they are returned, one global order.
                await conn.execute(
                    "SELECT id FROM resources WHERE id = ANY(%s::uuid[]) ORDER BY id FOR UPDATE",
                    (repo.pg_array(sorted(set(resource_ids))),),
                )
            case "constraint":
                pass

    async def _insert(
        self, conn: Conn, tenant_id: str, bookings: Sequence[repo.NewBooking]
    ) -> datetime:
        """Insert; returns the bookings' `created_at`. A violation is raised (and mapped)
        here: the insert's results are read before this returns."""
        with _violations_as_conflicts():
            return await repo.insert_bookings(conn, tenant_id, bookings)

    async def get_booking(
        self, caller: Caller, booking_id: str, request_id: str | None
    ) -> dict[str, Any]:
        caller.require("read")
        async with self.db.transaction(caller.tenant) as conn:
            row = await repo.get_booking(conn, booking_id)
            await audit(conn, caller, "booking.read", "booking", booking_id, request_id)
        return _booking_json(row)

    async def list_bookings(
        self,
        caller: Caller,
        window: Interval,
        status: str | None,
        limit: int,
        request_id: str | None,
    ) -> list[dict[str, Any]]:
        caller.require("read")
        async with self.db.transaction(caller.tenant) as conn:
            rows = await repo.list_bookings(conn, window, status, limit)
            await audit(
                conn, caller, "booking.list", "booking", None, request_id, {"count": len(rows)}
            )
        return [_booking_json(r) for r in rows]

    async def cancel(
        self, caller: Caller, booking_id: str, idem: Idempotency | None, request_id: str | None
    ) -> tuple[int, dict[str, Any]]:
        caller.require("book")
        now = self.clock()
        async with self.db.transaction(caller.tenant) as conn:
            replay = await claim(conn, caller.tenant, idem)
            if replay is not None:
                return replay
            booking = await repo.get_booking(conn, booking_id, for_update=True)
            if booking["status"] == "confirmed":
                catalog = await self.catalogs.get(conn, caller.tenant)
                record = catalog.service(booking["service_id"])
                cutoff = booking["starts_at"] - record.rules.cancel_cutoff
                if now > cutoff:
                    raise RuleViolation(
                        "too late to cancel", why={"reason": "cancel_cutoff", "cutoff": iso(cutoff)}
                    )
                await repo.cancel_bookings(conn, [booking_id])
                await audit(conn, caller, "booking.cancel", "booking", booking_id, request_id)
            body = _booking_json(await repo.get_booking(conn, booking_id))
            await remember(conn, caller.tenant, idem, 200, body)
        if booking["status"] == "confirmed":
            await self._release_lingering(caller.tenant, booking, record)
        return 200, body

    async def reschedule(
        self,
        caller: Caller,
        booking_id: str,
        start: datetime,
        pins: Sequence[str],
        idem: Idempotency | None,
        request_id: str | None,
    ) -> tuple[int, dict[str, Any]]:
        """Move a booking atomically: the old slot is released only if the new one is booked,
        in the same transaction."""
        caller.require("book")
        now = self.clock()
        async with self.db.transaction(caller.tenant) as conn:
            replay = await claim(conn, caller.tenant, idem)
            if replay is not None:
                return replay
            old = await repo.get_booking(conn, booking_id, for_update=True)
            if old["status"] != "confirmed":
                raise RuleViolation(
                    "only a confirmed booking can be rescheduled", why={"reason": "not_confirmed"}
                )
            catalog = await self.catalogs.get(conn, caller.tenant)
            record = catalog.service(old["service_id"])
            cutoff = old["starts_at"] - record.rules.reschedule_cutoff
            if now > cutoff:
                raise RuleViolation(
                    "too late to reschedule",
                    why={"reason": "reschedule_cutoff", "cutoff": iso(cutoff)},
                )
            # Without pins, prefer the booking's own resources, then anyone qualified.
            current = [r["resource_id"] for r in old["resources"]]
            # Its own hold may still linger on the old slot (see `_linger`).
            own = [old["hold_nonce"]] if old["hold_nonce"] else []
            try:
                assignment = await self.plan(
                    conn,
                    caller.tenant,
                    catalog,
                    record,
                    start,
                    pins or current,
                    now,
                    exclude=[booking_id],
                    own_holds=own,
                )
            except ServiceError:
                if pins:
                    raise
                assignment = await self.plan(
                    conn,
                    caller.tenant,
                    catalog,
                    record,
                    start,
                    (),
                    now,
                    exclude=[booking_id],
                    own_holds=own,
                )
            # Lock the old resources first too: one global order is kept because both lock
            # kinds are taken sorted, and re-locking what this transaction holds is a no-op.
            await self.lock(conn, [*current, *(rid for _, rid in assignment)])
            await repo.cancel_bookings(conn, [booking_id])
            new, created_at = await self.book_locked(
                conn,
                caller,
                catalog,
                record,
                start,
                assignment,
                now,
                old["customer"],
                exclude=[booking_id],
                rescheduled_from=booking_id,
            )
            body = _booking_json(repo.inserted_row(new, created_at))
            await acknowledge(
                conn,
                caller,
                idem,
                (201, body),
                "booking.reschedule",
                "booking",
                new.id,
                request_id,
                {"from": booking_id},
            )
        await self._release_lingering(caller.tenant, old, record)
        return 201, body

    async def capacity(
        self,
        caller: Caller,
        first: date,
        last: date,
        resource_ids: Sequence[str],
        request_id: str | None,
    ) -> list[dict[str, Any]]:
        """Booked and remaining daily capacity per resource and local day (of its own zone)."""
        caller.require("read")
        if last < first or (last - first).days > 62:
            raise InvalidInput("`to` must be on or after `from`, at most 62 days on", field="to")
        async with self.db.transaction(caller.tenant) as conn:
            catalog = await self.catalogs.get(conn, caller.tenant)
            unknown = [rid for rid in resource_ids if rid not in catalog.resources]
            if unknown:
                raise NotFound(f"resource {unknown[0]} not found", resource_id=unknown[0])
            chosen = [catalog.resources[rid] for rid in resource_ids] or [
                r for r in catalog.resources.values() if r.kind is ResourceKind.STAFF
            ]
            cur = await conn.execute(
                "SELECT resource_id::text AS rid, local_day, count(*) AS n, sum(minutes) AS m"
                " FROM booking_resources WHERE active AND resource_id = ANY(%s::uuid[])"
                " AND local_day BETWEEN %s AND %s GROUP BY 1, 2",
                (repo.pg_array(r.id for r in chosen), first, last),
            )
            loads = {(row["rid"], row["local_day"]): row for row in await cur.fetchall()}
            await audit(conn, caller, "capacity.read", "resource", None, request_id)
        out = []
        for resource in sorted(chosen, key=lambda r: r.id):
            day = first
            while day <= last:
                row = loads.get((resource.id, day))
                count, minutes = (int(row["n"]), int(row["m"])) if row else (0, 0)
                cap, cap_minutes = resource.daily_capacity, resource.daily_minutes
                out.append(
                    {
                        "resource_id": resource.id,
                        "date": day.isoformat(),
                        "zone": resource.zone,
                        "appointments": count,
                        "minutes": minutes,
                        "daily_capacity": cap,
                        "daily_minutes": cap_minutes,
                        "remaining_appointments": None if cap is None else max(cap - count, 0),
                        "remaining_minutes": None
                        if cap_minutes is None
                        else max(cap_minutes - minutes, 0),
                    }
                )
                day += timedelta(days=1)
        return out

    # --- recurring series ----------------------------------------------------------------------
    async def create_series(
        self,
        caller: Caller,
        *,
        service_id: str,
        starts_local: datetime,
        zone: str | None,
        rrule: str,
        pins: Sequence[str],
        customer: str,
        horizon: timedelta | None,
        idem: Idempotency | None,
        request_id: str | None,
    ) -> tuple[int, dict[str, Any]]:
        """Book every occurrence in the horizon on one set of resources — all or none.

        Each occurrence is checked (hours, conflicts, capacity, rules) and protected by the
        exclusion constraint, not only the first one.
        """
        caller.require("book")
        now = self.clock()
        horizon = horizon or self.limits.series_horizon
        if not timedelta(days=1) <= horizon <= timedelta(days=730):
            raise InvalidInput("horizon_days must be between 1 and 730", field="horizon_days")
        async with self.db.transaction(caller.tenant) as conn:
            replay = await claim(conn, caller.tenant, idem)
            if replay is not None:
                return replay
            catalog = await self.catalogs.get(conn, caller.tenant)
            record = catalog.service(service_id)
            series_zone = zone or record.rules.zone
            rule = Series(series_zone, starts_local, record.service.duration, rrule)
            window = Interval(now, now + horizon)
            occurrences = rule.expand(window, limit=self.limits.max_series_occurrences * 4)
            occurrences = [o for o in occurrences if o.start >= now]
            if not occurrences:
                raise InvalidInput("the rule has no occurrence within the horizon", field="rrule")
            if len(occurrences) > self.limits.max_series_occurrences:
                raise InvalidInput(
                    f"{len(occurrences)} occurrences; at most {self.limits.max_series_occurrences}",
                    field="rrule",
                )
            span = Interval(
                record.service.footprint(occurrences[0].start).start,
                record.service.footprint(occurrences[-1].start).end,
            )
            _, service, calendars = await self.calendars_for(
                conn, catalog, record.service, span, pins
            )
            assignment = _common_assignment(
                service, calendars, [o.start for o in occurrences], now, record.rules
            )
            assigned = [rid for _, rid in assignment]
            pinned = pinned_to(record.service, assignment)
            resources = catalog.resources_for(pinned, assigned)
            _, calendars = await repo.load_calendars(
                conn, catalog, resources, span, lock=await self.locks_for_read(conn, assigned)
            )
            series_id = repo.new_id()
            await repo.insert_series(
                conn,
                caller.tenant,
                series_id,
                service_id,
                series_zone,
                starts_local,
                rrule,
                window.end,
                customer,
            )
            bookings = []
            for occurrence in occurrences:
                verdict = explain(pinned, calendars, occurrence.start, now, record.rules)
                if not isinstance(verdict, Offered):
                    raise refuse(verdict, f"occurrence {iso(occurrence.start)}")
                booking = _new_booking(
                    record, calendars, occurrence.start, verdict.assignment, customer, caller.key_id
                )
                booking = replace(
                    booking, series_id=series_id, recurrence_id=occurrence.recurrence_id
                )
                for _, rid, footprint, _ in booking.resources:  # later occurrences see this one
                    calendars[rid].add(
                        Busy(
                            footprint, booking.id, BusyKind.BOOKING, booking.start, booking.minutes
                        )
                    )
                bookings.append(booking)
            await self._insert(conn, caller.tenant, bookings)
            body = await repo.get_series(conn, series_id)
            body = _series_json(body)
            await acknowledge(
                conn,
                caller,
                idem,
                (201, body),
                "series.create",
                "series",
                series_id,
                request_id,
                {"occurrences": len(bookings)},
            )
        return 201, body

    async def get_series(
        self, caller: Caller, series_id: str, request_id: str | None
    ) -> dict[str, Any]:
        caller.require("read")
        async with self.db.transaction(caller.tenant) as conn:
            body = await repo.get_series(conn, series_id)
            await audit(conn, caller, "series.read", "series", series_id, request_id)
        return _series_json(body)

    async def cancel_series(
        self, caller: Caller, series_id: str, idem: Idempotency | None, request_id: str | None
    ) -> tuple[int, dict[str, Any]]:
        """Cancel the series and every occurrence not yet started."""
        caller.require("book")
        now = self.clock()
        async with self.db.transaction(caller.tenant) as conn:
            replay = await claim(conn, caller.tenant, idem)
            if replay is not None:
                return replay
            await repo.get_series(conn, series_id)
            cancelled = await repo.cancel_series(conn, series_id, now)
            body = _series_json(await repo.get_series(conn, series_id))
            await acknowledge(
                conn,
                caller,
                idem,
                (200, body),
                "series.cancel",
                "series",
                series_id,
                request_id,
                {"cancelled": len(cancelled)},
            )
        return 200, body

    # --- helpers -------------------------------------------------------------------------------
    async def calendars_for(
        self,
        conn: Conn,
        catalog: repo.Catalog,
        service: Service,
        window: Interval,
        pins: Sequence[str],
        exclude: Sequence[str] = (),
        *,
        spans_only: bool = False,
    ) -> tuple[int, Service, dict[str, ResourceCalendar]]:
        """The catalog version the read saw, ``service`` with pinned resources applied, and
        calendars of its candidates only (see `repository.load_calendars`)."""
        service, resources = candidates(catalog, service, pins)
        version, calendars = await repo.load_calendars(
            conn, catalog, resources, window, exclude, spans_only=spans_only
        )
        return version, service, calendars

    async def add_live_holds(
        self,
        tenant_id: str,
        calendars: Mapping[str, ResourceCalendar],
        span: Interval,
        ignore: Collection[str] = (),
        within_s: float | None = None,
    ) -> bool:
        """Add the live holds overlapping ``span`` (but those named in ``ignore``) as busy
        time; False when the hold store is down or does not answer within ``within_s``."""
        lo, hi = seconds(span.start) * 1000, seconds(span.end) * 1000
        try:
            async with asyncio.timeout(within_s):
                live = await self.holds.live_claims(tenant_id, list(calendars), lo, hi)
        except (HoldStoreDown, TimeoutError):
            return False
        for rid, claims in live.items():
            for start_ms, end_ms, nonce in claims:
                if nonce in ignore:
                    continue
                span = Interval(
                    datetime.fromtimestamp(start_ms / 1000, UTC),
                    datetime.fromtimestamp(end_ms / 1000, UTC),
                )
                calendars[rid].add(Busy(span, nonce, BusyKind.HOLD))
        return True


@contextmanager
def _violations_as_conflicts() -> Iterator[None]:
    """An insert's constraint violations as the refusals they are (a booking's insert raises
    them; the statement's answer is read before its block ends)."""
    try:
        yield
    except (psycopg.errors.ExclusionViolation, psycopg.errors.DeadlockDetected) as exc:
        # Layer 3 caught what layers 1 and 2 should have: still a conflict, never a 500.
        # (Two unlocked inserts of overlapping time can also deadlock on each other's
        # constraint check; only the study's "constraint" strategy inserts unlocked.)
        raise SlotConflict(
            "the slot was taken concurrently", why={"reason": "conflict", "layer": "constraint"}
        ) from exc
    except psycopg.errors.CheckViolation as exc:
        raise SlotUnavailable(
            str(exc.diag.message_primary), why={"reason": "specialization"}
        ) from exc


@functools.lru_cache(maxsize=1024)
def _iso_ms(ms: int) -> str:
    """`iso` of an instant in epoch milliseconds: a hot slot's refusals all name one clash."""
    return iso(datetime.fromtimestamp(ms / 1000, UTC))


def held_by_another(clash: HoldConflict) -> SlotConflict:
    return SlotConflict(
        "another caller holds this slot",
        why={
            "reason": "held",
            "resource_id": clash.resource_id,
            "start": _iso_ms(clash.start_ms),
            "end": _iso_ms(clash.end_ms),
        },
    )


def fixed_assignment_of(
    catalog: repo.Catalog, service_id: str, pins: Sequence[str]
) -> Assignment | None:
    """`fixed_assignment` for a service of ``catalog``, remembered by the catalog (the answer
    depends on nothing else): a rush of refused holds asks it thousands of times for the same
    service and pins. Only pins that all name resources are remembered, so what a client sends
    cannot crowd them out."""
    key, known = (service_id, tuple(pins)), catalog.fixed_assignments
    if key in known:
        remembered: Assignment | None = known[key]
        return remembered
    assignment = fixed_assignment(catalog.services[service_id].service, catalog, pins)
    if all(rid in catalog.resources for rid in pins):
        if len(known) >= 4096:  # a tenant's pin combinations: bounded all the same
            known.clear()
        known[key] = assignment
    return assignment


def fixed_assignment(
    service: Service, catalog: repo.Catalog, pins: Sequence[str]
) -> Assignment | None:
    """The one assignment ``pins`` leave for ``service``, or None if they leave a choice (or
    are not all valid: the full path then explains why). Only the pinned resources are
    looked at: `repo.pin` reads no others, and this runs for every refused hold."""
    resources = catalog.resources_for(service, only=pins)
    if any(rid not in resources for rid in pins):
        return None
    assignment: list[tuple[int, str]] = []
    for index, req in enumerate(repo.pin(service.requirements, resources.values(), pins)):
        if req.resource_ids is None or len(req.resource_ids) != req.count:
            return None
        assignment += [(index, rid) for rid in sorted(req.resource_ids)]
    ids = [rid for _, rid in assignment]
    return tuple(assignment) if len(set(ids)) == len(ids) else None


def idem_nonce(caller: Caller, idem: Idempotency) -> str:
    seed = f"{caller.tenant}|{caller.key_id}|{idem.key}|".encode() + idem.fingerprint
    return hashlib.sha256(seed).hexdigest()[:16]


def candidates(
    catalog: repo.Catalog, service: Service, pins: Sequence[str]
) -> tuple[Service, dict[str, Resource]]:
    """``service`` with the pins applied, and the resources that may fill its requirements.
    With every requirement pinned, only the pins are looked at: a hold's or a booking's cost
    must not grow with the number of resources the tenant has (with 2,000 staff, scanning
    them all doubled a booking's CPU)."""
    if not pins:
        return service, catalog.resources_for(service)
    fit = catalog.resources_for(service, pins)
    refused = {rid: _why_unfit(catalog, service, rid) for rid in pins if rid not in fit}
    if refused:
        raise InvalidInput(
            "; ".join(f"resource {rid} {why}" for rid, why in sorted(refused.items())),
            field="resource_ids",
            missing_skills={
                rid: sorted(_missing_skills(catalog.resources[rid], service))
                for rid in refused
                if rid in catalog.resources
            },
        )
    service = replace(service, requirements=repo.pin(service.requirements, fit.values(), pins))
    # A requirement the pins leave open still chooses among all the tenant's resources.
    pinned = all(req.resource_ids is not None for req in service.requirements)
    return service, catalog.resources_for(service, pins if pinned else ())


def _missing_skills(resource: Resource, service: Service) -> frozenset[str]:
    """Skills the resource lacks for the closest requirement of its kind."""
    gaps = [r.missing_skills(resource) for r in service.requirements if r.kind == resource.kind]
    return min(gaps, key=len) if gaps else frozenset()


def _why_unfit(catalog: repo.Catalog, service: Service, rid: str) -> str:
    resource = catalog.resources.get(rid)
    if resource is None:
        return "is unknown or inactive"
    if not any(r.kind == resource.kind for r in service.requirements):
        return f"is a {resource.kind.value}, which this service does not use"
    return "lacks skills: " + ", ".join(sorted(_missing_skills(resource, service)))


def claims_over(footprint: Interval, resource_ids: Iterable[str]) -> list[Claim]:
    """What a hold over ``footprint`` claims in Valkey: each resource, in epoch milliseconds."""
    lo, hi = seconds(footprint.start) * 1000, seconds(footprint.end) * 1000
    return [Claim(rid, lo, hi) for rid in resource_ids]


def _claims(hold: Hold, footprint: Interval) -> list[Claim]:
    return claims_over(footprint, (rid for _, rid in hold.resources))


def _new_booking(
    record: repo.ServiceRecord,
    calendars: Mapping[str, ResourceCalendar],
    start: datetime,
    assignment: Assignment,
    customer: str,
    created_by: str,
    rescheduled_from: str | None = None,
    hold_nonce: str | None = None,
) -> repo.NewBooking:
    service = record.service
    footprint = service.footprint(start)
    return repo.NewBooking(
        id=repo.new_id(),
        service_id=record.id,
        start=start,
        end=start + service.duration,
        customer=customer,
        created_by=created_by,
        resources=tuple(
            (index, rid, footprint, local_date(start, calendars[rid].resource.zone))
            for index, rid in assignment
        ),
        minutes=int(service.duration.total_seconds() // 60),
        rescheduled_from=rescheduled_from,
        hold_nonce=hold_nonce,
    )


def _common_assignment(
    service: Service,
    calendars: Mapping[str, ResourceCalendar],
    starts: Sequence[datetime],
    now: datetime,
    rules: Any,
) -> Assignment:
    """One set of resources free at every start, or a 409 listing every failing occurrence."""
    failures: list[dict[str, Any]] = []
    common: list[set[str]] | None = None
    for start in starts:
        verdict = explain(service, calendars, start, now, rules)
        if not isinstance(verdict, Offered):
            failures.append({"start": iso(start), **describe(verdict)})
            continue
        free = free_candidates(service, calendars, start)
        assert isinstance(free, list)  # explain offered it, so every requirement has enough
        sets = [set(ids) for ids in free]
        common = sets if common is None else [a & b for a, b in zip(common, sets, strict=True)]
    if failures:
        raise SlotConflict(
            f"{len(failures)} of {len(starts)} occurrences cannot be booked",
            why={"reason": "occurrences_unavailable", "occurrences": failures},
        )
    assert common is not None
    assignment = match([sorted(ids) for ids in common], [r.count for r in service.requirements])
    if assignment is None:
        raise SlotConflict(
            "every occurrence is bookable, but no one set of resources is free for all of them;"
            " pin resource_ids or split the series",
            why={"reason": "no_common_resources"},
        )
    return tuple(assignment)


def _booking_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "service_id": row["service_id"],
        "status": row["status"],
        "start": iso(row["starts_at"]),
        "end": iso(row["ends_at"]),
        "customer": row["customer"],
        "series_id": row["series_id"],
        "recurrence_id": row["recurrence_id"].isoformat() if row["recurrence_id"] else None,
        "resources": row["resources"],
        "created_at": iso(row["created_at"]) if row["created_at"] else None,
        "cancelled_at": iso(row["cancelled_at"]) if row["cancelled_at"] else None,
        "rescheduled_from": row["rescheduled_from"],
    }


def _series_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "service_id": row["service_id"],
        "zone": row["zone"],
        "starts_local": row["starts_local"].isoformat(),
        "rrule": row["rrule"],
        "status": row["status"],
        "customer": row["customer"],
        "horizon_until": iso(row["horizon_until"]),
        "bookings": [_booking_json(b) for b in row["bookings"]],
    }
