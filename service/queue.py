"""The waiting queue: accept now, assign later — by hand or in bulk with CP-SAT.

Every assignment is a booking made through `BookingService.book_locked`: advisory locks, the
engine's re-check under them, and the exclusion constraint. The queue can therefore never
cause an overlap, a capacity breach or an unqualified assignment, whatever it is told.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from engine.assignment import (
    LostToCompetition,
    NoFeasibleStart,
    QueuedAppointment,
    UnassignedReason,
    assign,
    booking_entry,
)
from engine.calendar import ResourceCalendar, instant
from engine.intervals import Interval
from engine.model import Resource, Rules
from engine.slots import NoQualifiedResource, Offered, explain, grid
from service import repository as repo
from service.auth import Caller
from service.booking import BookingService, claims_over, iso
from service.db import Conn, Idempotency, acknowledge, audit, claim, to_json
from service.errors import InvalidInput, NotFound, RuleViolation, ServiceError
from service.holds import HoldStoreDown

ENTRY_COLUMNS = (
    "id::text, service_id::text, earliest, latest, priority, customer, status,"
    " booking_id::text, last_reason, created_at, assigned_at"
)
MAX_QUEUE_WINDOW = timedelta(days=62)
OFFER_TTL = timedelta(minutes=15)


def reason_json(reason: UnassignedReason | dict[str, Any]) -> dict[str, Any]:
    match reason:
        case NoQualifiedResource(requirement, detail):
            return {"reason": "no_qualified_resource", "requirement": requirement, "detail": detail}
        case NoFeasibleStart(grid_starts, allowed):
            return {
                "reason": "no_feasible_start",
                "grid_starts": grid_starts,
                "allowed_by_rules": allowed,
            }
        case LostToCompetition(feasible):
            return {"reason": "lost_to_competition", "feasible_starts": feasible}
        case dict():
            return reason


def entry_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "service_id": row["service_id"],
        "earliest": iso(row["earliest"]),
        "latest": iso(row["latest"]),
        "priority": row["priority"],
        "customer": row["customer"],
        "status": row["status"],
        "booking_id": row["booking_id"],
        "last_reason": row["last_reason"],
        "created_at": iso(row["created_at"]),
        "assigned_at": iso(row["assigned_at"]) if row["assigned_at"] else None,
    }


async def _entry(conn: Conn, entry_id: str, for_update: bool = False) -> dict[str, Any]:
    lock = " FOR UPDATE" if for_update else ""
    cur = await conn.execute(
        f"SELECT {ENTRY_COLUMNS} FROM queue_entries WHERE id = %s{lock}", (entry_id,)
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"queue entry {entry_id} not found", queue_entry_id=entry_id)
    return dict(row)


async def _mark_assigned(conn: Conn, entry_id: str, booking_id: str) -> None:
    await conn.execute(
        "UPDATE queue_entries SET status = 'assigned', booking_id = %s, assigned_at = now(),"
        " last_reason = NULL WHERE id = %s",
        (booking_id, entry_id),
    )


class QueueService:
    def __init__(self, booking: BookingService) -> None:
        self.booking = booking
        self.db = booking.db
        self.clock = booking.clock

    async def enqueue(
        self, caller: Caller, body: dict[str, Any], idem: Idempotency | None, request_id: str | None
    ) -> tuple[int, dict[str, Any]]:
        """Accept an appointment without a time or resources."""
        caller.require("book")
        earliest, latest = body["earliest"], body["latest"]
        if latest < earliest:
            raise InvalidInput("latest is before earliest", field="latest")
        if latest - earliest > MAX_QUEUE_WINDOW:
            raise InvalidInput(
                f"the window may span at most {MAX_QUEUE_WINDOW.days} days", field="latest"
            )
        if latest < self.clock():
            raise InvalidInput("the window has already passed", field="latest")
        entry_id = repo.new_id()
        async with self.db.transaction(caller.tenant) as conn:
            replay = await claim(conn, caller.tenant, idem)
            if replay is not None:
                return replay
            catalog = await self.booking.catalogs.get(conn, caller.tenant)
            catalog.service(body["service_id"])
            await conn.execute(
                "INSERT INTO queue_entries"
                " (id, tenant_id, service_id, earliest, latest, priority, customer)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    entry_id,
                    caller.tenant,
                    body["service_id"],
                    earliest,
                    latest,
                    body["priority"],
                    body["customer"],
                ),
            )
            out = entry_json(await _entry(conn, entry_id))
            await acknowledge(
                conn, caller, idem, (201, out), "queue.enqueue", "queue_entry", entry_id, request_id
            )
        return 201, out

    async def list_entries(
        self,
        caller: Caller,
        status: str,
        service_id: str | None,
        order: str,
        limit: int,
        offset: int,
        request_id: str | None,
    ) -> dict[str, Any]:
        """The queue, by priority (highest first, then oldest) or by age (oldest first)."""
        caller.require("read")
        where: list[str] = ["status = %s"]
        params: list[Any] = [status]
        if service_id:
            where.append("service_id = %s")
            params.append(service_id)
        ordering = "priority DESC, created_at, id" if order == "priority" else "created_at, id"
        async with self.db.transaction(caller.tenant) as conn:
            cur = await conn.execute(
                f"SELECT {ENTRY_COLUMNS} FROM queue_entries WHERE {' AND '.join(where)}"
                f" ORDER BY {ordering} LIMIT %s OFFSET %s",
                [*params, limit, offset],
            )
            rows = [entry_json(dict(r)) for r in await cur.fetchall()]
            await audit(conn, caller, "queue.list", "queue_entry", None, request_id)
        return {"entries": rows, "next_offset": offset + len(rows) if len(rows) == limit else None}

    async def get(self, caller: Caller, entry_id: str, request_id: str | None) -> dict[str, Any]:
        caller.require("read")
        async with self.db.transaction(caller.tenant) as conn:
            out = entry_json(await _entry(conn, entry_id))
            await audit(conn, caller, "queue.read", "queue_entry", entry_id, request_id)
        return out

    async def withdraw(
        self, caller: Caller, entry_id: str, idem: Idempotency | None, request_id: str | None
    ) -> tuple[int, dict[str, Any]]:
        caller.require("book")
        async with self.db.transaction(caller.tenant) as conn:
            replay = await claim(conn, caller.tenant, idem)
            if replay is not None:
                return replay
            entry = await _entry(conn, entry_id, for_update=True)
            if entry["status"] == "assigned":
                raise RuleViolation(
                    "an assigned entry is cancelled through its booking", why={"reason": "assigned"}
                )
            await conn.execute(
                "UPDATE queue_entries SET status = 'withdrawn' WHERE id = %s", (entry_id,)
            )
            out = entry_json(await _entry(conn, entry_id))
            await acknowledge(
                conn,
                caller,
                idem,
                (200, out),
                "queue.withdraw",
                "queue_entry",
                entry_id,
                request_id,
            )
        await self._release_offer(caller.tenant, entry_id)  # its offered slot goes public again
        return 200, out

    async def assign_one(
        self,
        caller: Caller,
        entry_id: str,
        start: datetime,
        pins: Sequence[str],
        idem: Idempotency | None,
        request_id: str | None,
    ) -> tuple[int, dict[str, Any]]:
        """Assign one waiting entry by hand: validated like any booking, in one transaction."""
        caller.require("book")
        now = self.clock()
        async with self.db.transaction(caller.tenant) as conn:
            replay = await claim(conn, caller.tenant, idem)
            if replay is not None:
                return replay
            entry = await _entry(conn, entry_id, for_update=True)
            if entry["status"] != "waiting":
                raise RuleViolation(
                    f"the entry is {entry['status']}, not waiting", why={"reason": "not_waiting"}
                )
            if not entry["earliest"] <= start <= entry["latest"]:
                raise InvalidInput(
                    "start must lie in the entry's window"
                    f" [{iso(entry['earliest'])}, {iso(entry['latest'])}]",
                    field="start",
                )
            catalog = await self.booking.catalogs.get(conn, caller.tenant)
            record = catalog.service(entry["service_id"])
            assignment = await self.booking.plan(
                conn,
                caller.tenant,
                catalog,
                record,
                start,
                pins,
                now,
                own_holds=[_offer_nonce(entry_id)],
            )
            booking, _ = await self.booking.book_locked(
                conn, caller, catalog, record, start, assignment, now, entry["customer"], exclude=()
            )
            await _mark_assigned(conn, entry_id, booking.id)
            out = {"entry": entry_json(await _entry(conn, entry_id)), "booking_id": booking.id}
            await acknowledge(
                conn,
                caller,
                idem,
                (201, out),
                "queue.assign",
                "queue_entry",
                entry_id,
                request_id,
                {"booking": booking.id},
            )
        await self._release_offer(caller.tenant, entry_id)
        return 201, out

    async def auto_assign(
        self,
        caller: Caller,
        window: Interval | None,
        service_id: str | None,
        time_limit: float,
        request_id: str | None,
    ) -> dict[str, Any]:
        """Assign the whole queue (or, with ``window``, the entries that may start in it, each
        placed inside it) with the engine's CP-SAT model, then book each placement through
        the locked path. An entry left waiting gets its reason (stored, and in the answer)."""
        caller.require("book")
        now = self.clock()
        async with self.db.transaction(caller.tenant) as conn:
            where: list[str] = ["status = 'waiting'", "latest >= %s"]
            params: list[Any] = [now]
            if window is not None:
                # Entries with a whole-second start in the window (see `_starts_within`).
                where += ["earliest <= %s", "latest >= %s"]
                params += [window.end - timedelta(seconds=1), window.start]
            if service_id:
                where.append("service_id = %s")
                params.append(service_id)
            cur = await conn.execute(
                f"SELECT {ENTRY_COLUMNS} FROM queue_entries WHERE {' AND '.join(where)}"
                " ORDER BY priority DESC, created_at, id",
                params,
            )
            entries = [dict(r) for r in await cur.fetchall()]
            catalog = await self.booking.catalogs.get(conn, caller.tenant)
            queue = [
                QueuedAppointment(
                    e["id"],
                    catalog.service(e["service_id"]).service,
                    *_starts_within(e["earliest"], e["latest"], window),
                    e["priority"],
                )
                for e in entries
            ]
            calendars: dict[str, ResourceCalendar] = {}
            if queue:
                resources: dict[str, Resource] = {}
                for item in queue:
                    resources.update(catalog.resources_for(item.service))
                span = Interval(
                    min(q.earliest - q.service.buffer_before for q in queue),
                    max(q.latest + q.service.duration + q.service.buffer_after for q in queue),
                )
                _, calendars = await repo.load_calendars(conn, catalog, resources, span)
            await audit(
                conn,
                caller,
                "queue.auto_assign.plan",
                "queue_entry",
                None,
                request_id,
                {"entries": len(queue)},
            )
        if calendars:  # customers in the middle of booking, and offers made, keep their slots
            await self.booking.add_live_holds(caller.tenant, calendars, span)
        # Services whose effective rules differ are solved one group after another; each
        # group's placements are busy time for the next.
        groups: dict[Rules, list[QueuedAppointment]] = defaultdict(list)
        for item, entry in zip(queue, entries, strict=True):
            groups[catalog.service(entry["service_id"]).rules].append(item)
        placed, reasons, statuses = [], {}, []
        for rules, members in groups.items():
            result = await asyncio.to_thread(
                assign, members, calendars, now, rules, time_limit=time_limit
            )
            statuses.append(result.status)
            by_id = {m.id: m for m in members}
            for a in result.assigned:
                for _, rid in a.resources:
                    calendars[rid].add(booking_entry(by_id[a.appointment_id], a.start))
                placed.append(a)
            reasons.update({u.appointment_id: reason_json(u.reason) for u in result.unassigned})
        booked: list[dict[str, str]] = []
        for a in placed:
            try:
                booking_id = await self._book_placement(
                    caller, a.appointment_id, a.start, a.resources, now, request_id
                )
            except ServiceError as exc:  # the world moved since the plan: stays waiting
                reasons[a.appointment_id] = {"reason": "conflict_at_booking", "detail": exc.detail}
                continue
            await self._release_offer(caller.tenant, a.appointment_id)
            booked.append(
                {"entry_id": a.appointment_id, "booking_id": booking_id, "start": iso(a.start)}
            )
        if reasons:
            async with self.db.transaction(caller.tenant) as conn, conn.cursor() as cur:
                await cur.executemany(
                    "UPDATE queue_entries SET last_reason = %s"
                    " WHERE id = %s AND status = 'waiting'",
                    [(to_json(r), eid) for eid, r in reasons.items()],
                )
                await audit(
                    conn,
                    caller,
                    "queue.auto_assign.unassigned",
                    "queue_entry",
                    None,
                    request_id,
                    {"entries": sorted(reasons)},
                )
        return {
            "considered": len(queue),
            "assigned": booked,
            "unassigned": [{"entry_id": eid, **r} for eid, r in reasons.items()],
            "solver_status": statuses,
        }

    async def _book_placement(
        self,
        caller: Caller,
        entry_id: str,
        start: datetime,
        resources: tuple[tuple[int, str], ...],
        now: datetime,
        request_id: str | None,
    ) -> str:
        async with self.db.transaction(caller.tenant) as conn:
            entry = await _entry(conn, entry_id, for_update=True)
            if entry["status"] != "waiting":
                raise RuleViolation("no longer waiting")
            catalog = await self.booking.catalogs.get(conn, caller.tenant)
            record = catalog.service(entry["service_id"])
            booking, _ = await self.booking.book_locked(
                conn, caller, catalog, record, start, resources, now, entry["customer"], exclude=()
            )
            await _mark_assigned(conn, entry_id, booking.id)
            await audit(
                conn,
                caller,
                "queue.assign",
                "queue_entry",
                entry_id,
                request_id,
                {"booking": booking.id, "by": "auto"},
            )
        return booking.id

    # --- freed time goes to the queue first -----------------------------------------------------
    async def offer_freed(
        self, caller: Caller, booking: dict[str, Any], request_id: str | None
    ) -> list[dict[str, Any]]:
        """After a cancellation: the waiting entries that now fit the freed time, best first
        (priority, then age). The best one's slot is held for the queue for `OFFER_TTL`, so the
        public sees it taken while the front desk assigns it."""
        now = self.clock()
        freed = Interval(
            datetime.fromisoformat(booking["start"]), datetime.fromisoformat(booking["end"])
        )
        freed_ids = [r["resource_id"] for r in booking["resources"]]
        async with self.db.transaction(caller.tenant) as conn:
            cur = await conn.execute(
                f"SELECT {ENTRY_COLUMNS} FROM queue_entries WHERE status = 'waiting'"
                " AND earliest <= %s AND latest >= %s"
                " ORDER BY priority DESC, created_at, id LIMIT 50",
                (freed.end, freed.start),
            )
            entries = [dict(r) for r in await cur.fetchall()]
            if not entries:
                return []
            catalog = await self.booking.catalogs.get(conn, caller.tenant)
            offers: list[dict[str, Any]] = []
            for entry in entries:
                record = catalog.service(entry["service_id"])
                # Only freed resources this service can use matter (pinning one it cannot use
                # is an error, which would turn the committed cancellation into a 422).
                usable = catalog.resources_for(record.service, freed_ids)
                if not usable:
                    continue
                _, service, calendars = await self.booking.calendars_for(
                    conn,
                    catalog,
                    record.service,
                    freed.padded(record.service.duration, record.service.duration),
                    list(usable),
                )
                lo, hi = (
                    max(entry["earliest"], freed.start - record.service.duration),
                    min(entry["latest"], freed.end),
                )
                if lo > hi:
                    continue
                for posix in grid(
                    Interval(lo, hi + timedelta(seconds=1)), service.step, record.rules.zone
                ):
                    verdict = explain(service, calendars, instant(posix), now, record.rules)
                    if isinstance(verdict, Offered):
                        offers.append(
                            {
                                "entry_id": entry["id"],
                                "start": iso(verdict.start),
                                "resources": [
                                    {"requirement": i, "resource_id": r}
                                    for i, r in verdict.assignment
                                ],
                                "footprint": service.footprint(verdict.start),
                            }
                        )
                        break
            if offers:
                await audit(
                    conn,
                    caller,
                    "queue.offer",
                    "queue_entry",
                    offers[0]["entry_id"],
                    request_id,
                    {"offers": len(offers)},
                )
        if offers:
            best = offers[0]
            claims = claims_over(best["footprint"], (r["resource_id"] for r in best["resources"]))
            with contextlib.suppress(HoldStoreDown):  # no hold store: offered, not held
                nonce = _offer_nonce(best["entry_id"])
                if (
                    await self.booking.holds.acquire(caller.tenant, nonce, claims, OFFER_TTL)
                    is None
                ):
                    best["held_until"] = iso(now + OFFER_TTL)
        for offer in offers:
            offer.pop("footprint")
        return offers

    async def _release_offer(self, tenant_id: str, entry_id: str) -> None:
        # The offer hold expires by itself; releasing it early needs its claims, which only the
        # hold key's existence matters for: deleting the key makes its members dead on sight.
        with contextlib.suppress(HoldStoreDown):
            await self.booking.holds.release(tenant_id, _offer_nonce(entry_id), [])


def _starts_within(
    earliest: datetime, latest: datetime, window: Interval | None
) -> tuple[datetime, datetime]:
    """An entry's acceptable starts ``[earliest, latest]`` (inclusive) narrowed to the
    half-open ``window`` an auto-assign was asked for (starts are whole seconds)."""
    if window is None:
        return earliest, latest
    return max(earliest, window.start), min(latest, window.end - timedelta(seconds=1))


def _offer_nonce(entry_id: str) -> str:
    return "q" + entry_id.replace("-", "")[:15]
