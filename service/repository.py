"""SQL for the booking service, and the one place rows become engine values.

Every function runs inside a transaction from `Database.transaction`, so RLS already limits
it to one tenant; the explicit tenant filters below are for the planner, not for security. The
exception is `load_calendars`: its one statement sets the tenant itself, so a read that needs no
other statement runs it outside any transaction (`BookingService._read_current`).
"""

from __future__ import annotations

import re
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, TypeVar

from psycopg.rows import DictRow, tuple_row

from engine.calendar import ResourceCalendar
from engine.intervals import Interval
from engine.model import Busy, BusyKind, Requirement, Resource, ResourceKind, Rules, Service
from engine.recurrence import Series
from service.db import Conn, to_json
from service.errors import NotFound, ServiceError

T = TypeVar("T")


def new_id() -> str:
    return str(uuid.uuid4())


# --- conversion ------------------------------------------------------------------------------
def rules_from(tenant_zone: str, *layers: dict[str, Any]) -> Rules:
    """Tenant rules overlaid by service rules (validated when they were stored)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    max_advance = merged.get("max_advance_days")
    return Rules(
        zone=tenant_zone,
        min_lead=timedelta(minutes=merged.get("min_lead_minutes", 0)),
        max_advance=timedelta(days=max_advance) if max_advance is not None else None,
        blackout_dates=frozenset(date.fromisoformat(d) for d in merged.get("blackout_dates", [])),
        cancel_cutoff=timedelta(minutes=merged.get("cancel_cutoff_minutes", 0)),
        reschedule_cutoff=timedelta(minutes=merged.get("reschedule_cutoff_minutes", 0)),
    )


def requirements_from(raw: Sequence[dict[str, Any]]) -> tuple[Requirement, ...]:
    return tuple(
        Requirement(
            ResourceKind(item["kind"]), frozenset(item.get("skills", ())), int(item.get("count", 1))
        )
        for item in raw
    )


def pin(
    requirements: tuple[Requirement, ...], resources: Iterable[Resource], pinned: Sequence[str]
) -> tuple[Requirement, ...]:
    """Restrict each requirement to the pinned resources it admits, if it admits any."""
    if not pinned:
        return requirements
    wanted = set(pinned)
    chosen = [r for r in resources if r.id in wanted]
    out = []
    for req in requirements:
        mine = frozenset(r.id for r in chosen if req.admits(r))
        out.append(Requirement(req.kind, req.skills, req.count, mine) if mine else req)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    id: str
    name: str
    service: Service
    rules: Rules
    requirements_json: list[dict[str, Any]]
    rules_json: dict[str, Any]
    active: bool

    def public(self) -> dict[str, Any]:
        s = self.service
        return {
            "id": self.id,
            "name": self.name,
            "duration_minutes": int(s.duration.total_seconds() // 60),
            "buffer_before_minutes": int(s.buffer_before.total_seconds() // 60),
            "buffer_after_minutes": int(s.buffer_after.total_seconds() // 60),
            "step_minutes": int(s.step.total_seconds() // 60),
            "requirements": self.requirements_json,
            "rules": self.rules_json,
            "active": self.active,
        }


# --- tenants and keys ------------------------------------------------------------------------
async def insert_tenant(
    conn: Conn, tenant_id: str, name: str, zone: str, rules: dict[str, Any]
) -> bool:
    """Insert the tenant; False if that id exists already (an idempotent retry)."""
    cur = await conn.execute(
        "INSERT INTO tenants (id, name, zone, rules) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (id) DO NOTHING RETURNING 1",
        (tenant_id, name, zone, to_json(rules)),
    )
    return await cur.fetchone() is not None


async def get_tenant(conn: Conn, tenant_id: str) -> dict[str, Any]:
    cur = await conn.execute(
        "SELECT id::text, name, zone, rules, created_at FROM tenants WHERE id = %s", (tenant_id,)
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound("tenant not found")
    return dict(row)


async def insert_api_key(
    conn: Conn,
    tenant_id: str,
    key_id: str,
    prefix: str,
    secret_hash: bytes,
    scopes: Sequence[str],
    name: str,
) -> None:
    await conn.execute(
        "INSERT INTO api_keys (id, tenant_id, prefix, secret_hash, scopes, name)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (key_id, tenant_id, prefix, secret_hash, list(scopes), name),
    )


async def authenticate(conn: Conn, prefix: str, secret_hash: bytes) -> dict[str, Any] | None:
    cur = await conn.execute(
        "SELECT key_id::text, tenant_id::text, scopes FROM authenticate_api_key(%s, %s)",
        (prefix, secret_hash),
    )
    return await cur.fetchone()


async def list_api_keys(conn: Conn) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT id::text, prefix, name, scopes, created_at, revoked_at"
        " FROM api_keys ORDER BY created_at"
    )
    return [dict(r) for r in await cur.fetchall()]


async def revoke_api_key(conn: Conn, key_id: str) -> bool:
    cur = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL RETURNING 1",
        (key_id,),
    )
    return await cur.fetchone() is not None


# --- resources and services ------------------------------------------------------------------
RESOURCE_COLUMNS = "id::text, kind, name, zone, skills, daily_capacity, daily_minutes, active"


async def insert_resource(conn: Conn, tenant_id: str, rid: str, body: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO resources"
        " (id, tenant_id, kind, name, zone, skills, daily_capacity, daily_minutes)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            rid,
            tenant_id,
            body["kind"],
            body["name"],
            body["zone"],
            sorted(body["skills"]),
            body.get("daily_capacity"),
            body.get("daily_minutes"),
        ),
    )


async def insert_working_hours(
    conn: Conn,
    tenant_id: str,
    resource_id: str,
    starts_local: datetime,
    minutes: int,
    rrule: str | None,
) -> str:
    wid = new_id()
    await conn.execute(
        "INSERT INTO working_hours"
        " (id, tenant_id, resource_id, starts_local, duration_minutes, rrule)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (wid, tenant_id, resource_id, starts_local, minutes, rrule),
    )
    return wid


async def insert_exception(
    conn: Conn, tenant_id: str, resource_id: str, kind: str, interval: Interval, note: str
) -> str:
    eid = new_id()
    await conn.execute(
        "INSERT INTO resource_exceptions (id, tenant_id, resource_id, kind, during, note)"
        " VALUES (%s, %s, %s, %s, tstzrange(%s, %s), %s)",
        (eid, tenant_id, resource_id, kind, interval.start, interval.end, note),
    )
    return eid


async def get_resource(conn: Conn, rid: str) -> dict[str, Any]:
    cur = await conn.execute(f"SELECT {RESOURCE_COLUMNS} FROM resources WHERE id = %s", (rid,))
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"resource {rid} not found", resource_id=rid)
    resource = dict(row)
    cur = await conn.execute(
        "SELECT id::text, starts_local, duration_minutes, rrule FROM working_hours"
        " WHERE resource_id = %s ORDER BY starts_local",
        (rid,),
    )
    resource["working_hours"] = [dict(r) for r in await cur.fetchall()]
    cur = await conn.execute(
        "SELECT id::text, kind, lower(during) AS start, upper(during) AS end, note"
        " FROM resource_exceptions WHERE resource_id = %s ORDER BY lower(during)",
        (rid,),
    )
    resource["exceptions"] = [dict(r) for r in await cur.fetchall()]
    return resource


async def list_resources(conn: Conn) -> list[dict[str, Any]]:
    cur = await conn.execute(f"SELECT {RESOURCE_COLUMNS} FROM resources ORDER BY name, id")
    return [dict(r) for r in await cur.fetchall()]


async def delete_exception(conn: Conn, resource_id: str, exception_id: str) -> bool:
    cur = await conn.execute(
        "DELETE FROM resource_exceptions WHERE id = %s AND resource_id = %s RETURNING 1",
        (exception_id, resource_id),
    )
    return await cur.fetchone() is not None


async def insert_service(conn: Conn, tenant_id: str, sid: str, body: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO services (id, tenant_id, name, duration_minutes, buffer_before_minutes,"
        " buffer_after_minutes, step_minutes, requirements, rules)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            sid,
            tenant_id,
            body["name"],
            body["duration_minutes"],
            body["buffer_before_minutes"],
            body["buffer_after_minutes"],
            body["step_minutes"],
            to_json(body["requirements"]),
            to_json(body["rules"]),
        ),
    )


async def list_services(
    conn: Conn, tenant_zone: str, tenant_rules: dict[str, Any]
) -> list[ServiceRecord]:
    cur = await conn.execute(f"SELECT {SERVICE_COLUMNS} FROM services ORDER BY name, id")
    return [_service_record(row, tenant_zone, tenant_rules) for row in await cur.fetchall()]


SERVICE_COLUMNS = (
    "id::text, name, duration_minutes, buffer_before_minutes, buffer_after_minutes,"
    " step_minutes, requirements, rules, active"
)


async def get_service(conn: Conn, sid: str) -> ServiceRecord:
    """The service with its effective rules (tenant rules overlaid by the service's)."""
    cur = await conn.execute(
        f"SELECT {SERVICE_COLUMNS}, (SELECT zone FROM tenants) AS tenant_zone,"
        " (SELECT rules FROM tenants) AS tenant_rules FROM services WHERE id = %s",
        (sid,),
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"service {sid} not found", service_id=sid)
    return _service_record(row, row["tenant_zone"], row["tenant_rules"])


def _service_record(
    row: dict[str, Any], tenant_zone: str, tenant_rules: dict[str, Any]
) -> ServiceRecord:
    service = Service(
        row["id"],
        timedelta(minutes=row["duration_minutes"]),
        requirements_from(row["requirements"]),
        timedelta(minutes=row["buffer_before_minutes"]),
        timedelta(minutes=row["buffer_after_minutes"]),
        timedelta(minutes=row["step_minutes"]),
    )
    return ServiceRecord(
        row["id"],
        row["name"],
        service,
        rules_from(tenant_zone, tenant_rules, row["rules"]),
        row["requirements"],
        row["rules"],
        row["active"],
    )


# --- calendars -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Catalog:
    """A tenant's services, active resources and working hours at one catalog version."""

    tenant_id: str
    version: int
    services: dict[str, ServiceRecord]
    resources: dict[str, Resource]
    hours: dict[str, tuple[Series, ...]]
    # (service id, pins) -> `booking.fixed_assignment`'s answer, which depends on nothing but
    # this catalog: filled and bounded by `booking.fixed_assignment_of`.
    fixed_assignments: dict[tuple[str, tuple[str, ...]], Any] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def service(self, sid: str) -> ServiceRecord:
        record = self.services.get(sid)
        if record is None:
            raise NotFound(f"service {sid} not found", service_id=sid)
        return record

    def resources_for(self, service: Service, only: Sequence[str] = ()) -> dict[str, Resource]:
        """Active resources some requirement of ``service`` admits (optionally only ``only``)."""
        pool = (
            self.resources
            if not only
            else {r: self.resources[r] for r in only if r in self.resources}
        )
        return {
            rid: r for rid, r in pool.items() if any(req.admits(r) for req in service.requirements)
        }


class CatalogCache:
    """Per-tenant catalogs in memory, checked against `tenants.catalog_version` (bumped by
    triggers on every catalog change) by every request that decides with them, so they are
    never stale. Where calendars are read, the check costs no statement: `load_calendars`
    returns the version its own statement saw."""

    def __init__(self, max_tenants: int = 1024) -> None:
        self._entries: OrderedDict[str, Catalog] = OrderedDict()
        self._max = max_tenants

    async def get(self, conn: Conn, tenant_id: str) -> Catalog:
        """The current catalog (``conn``: in a transaction scoped to the tenant)."""
        version = await current_version(conn, tenant_id)
        cached = self._entries.get(tenant_id)
        if cached is not None and cached.version == version:
            self._entries.move_to_end(tenant_id)
            return cached
        return await self._load(conn, tenant_id, version)

    def cached(self, tenant_id: str) -> Catalog | None:
        """The catalog last read for ``tenant_id``, unchecked: a caller that decides with it
        must compare its `version` with the current one before trusting the decision."""
        catalog = self._entries.get(tenant_id)
        if catalog is not None:
            self._entries.move_to_end(tenant_id)  # in use: the last to be evicted
        return catalog

    async def read(
        self, conn: Conn, tenant_id: str, reads: Callable[[Catalog], Awaitable[tuple[int, T]]]
    ) -> tuple[Catalog, T]:
        """The current catalog and the result of ``reads(catalog)``, the queries that depend
        on it, which return with their result the catalog version their statement saw.

        ``reads`` first runs against the cached catalog; only if that proves stale is the
        catalog reloaded and ``reads`` run again. So ``reads`` must be safe to repeat in one
        transaction (reads, and advisory locks, which a transaction may re-take). ``conn``: in
        a transaction scoped to the tenant."""
        cached = self._entries.get(tenant_id)
        if cached is None:
            version = await current_version(conn, tenant_id)
        else:
            try:
                version, result = await reads(cached)
            except ServiceError:
                version = await current_version(conn, tenant_id)
                if version == cached.version:
                    raise  # a real refusal, not an artefact of a stale catalog
            else:
                if version == cached.version:
                    self._entries.move_to_end(tenant_id)
                    return cached, result
        catalog = await self._load(conn, tenant_id, version)
        _, result = await reads(catalog)
        return catalog, result

    async def _load(self, conn: Conn, tenant_id: str, version: int) -> Catalog:
        catalog = await _load_catalog(conn, tenant_id, version)
        self._entries[tenant_id] = catalog
        self._entries.move_to_end(tenant_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return catalog


async def current_version(conn: Conn, tenant_id: str) -> int:
    """The tenant's catalog version (``conn``: in a transaction scoped to the tenant)."""
    cur = await conn.execute("SELECT catalog_version FROM tenants WHERE id = %s", (tenant_id,))
    row = await cur.fetchone()
    if row is None:
        raise NotFound("tenant not found")
    return int(row["catalog_version"])


async def _load_catalog(conn: Conn, tenant_id: str, version: int) -> Catalog:
    cur = await conn.execute("SELECT zone, rules FROM tenants")
    tenant = await cur.fetchone()
    if tenant is None:
        raise NotFound("tenant not found")
    cur = await conn.execute(f"SELECT {SERVICE_COLUMNS} FROM services")
    services = {
        row["id"]: _service_record(row, tenant["zone"], tenant["rules"])
        for row in await cur.fetchall()
    }
    cur = await conn.execute(
        "SELECT id::text, kind, zone, skills, daily_capacity, daily_minutes FROM resources"
        " WHERE active"
    )
    resources = {
        row["id"]: Resource(
            row["id"],
            ResourceKind(row["kind"]),
            row["zone"],
            frozenset(row["skills"]),
            row["daily_capacity"],
            row["daily_minutes"],
        )
        for row in await cur.fetchall()
    }
    hours: dict[str, list[Series]] = {rid: [] for rid in resources}
    cur = await conn.execute(
        "SELECT resource_id::text, starts_local, duration_minutes, rrule FROM working_hours"
    )
    for row in await cur.fetchall():
        rid = row["resource_id"]
        if rid in hours:
            hours[rid].append(
                Series(
                    resources[rid].zone,
                    row["starts_local"],
                    timedelta(minutes=row["duration_minutes"]),
                    row["rrule"],
                )
            )
    return Catalog(
        tenant_id, version, services, resources, {rid: tuple(h) for rid, h in hours.items()}
    )


async def load_calendars(
    conn: Conn,
    catalog: Catalog,
    resources: Mapping[str, Resource],
    window: Interval,
    exclude: Sequence[str] = (),
    *,
    spans_only: bool = False,
    lock: Sequence[str] = (),
) -> tuple[int, dict[str, ResourceCalendar]]:
    """Calendars of ``resources`` for questions about ``window``, and the catalog version the
    same statement saw (`CatalogCache.read` checks a cached catalog by it). Working hours come
    from the catalog; exceptions and bookings overlapping the window, and per-day booking
    counts for daily capacity (over the whole local days around the window, only for
    resources with a daily limit; the busy entries themselves are then not counted again),
    from one call of `calendar_window` (migration 0009), which also sets the tenant: it needs no
    transaction around it. Bookings in ``exclude`` are left out (a reschedule does not collide
    with itself). ``lock``: resources whose advisory locks (layer 2) the call takes first, so
    everything it returns is read under them; they are transaction-scoped, so ``lock`` is for
    a ``conn`` inside a `Database.transaction` (outside one, they end with the statement).

    ``spans_only``: for questions about free time alone (availability), busy time comes merged
    per resource and kind, without the entries' ids: over a window of weeks a booked-up
    resource is a few spans instead of hundreds of rows, each of which cost a Python object
    or three (most of such a request's CPU)."""
    rows = await read_window(
        conn, catalog, resources, window, exclude, spans_only=spans_only, lock=lock
    )
    return calendars_of(catalog, resources, rows)


async def read_window(
    conn: Conn,
    catalog: Catalog,
    resources: Mapping[str, Resource],
    window: Interval,
    exclude: Sequence[str] = (),
    *,
    spans_only: bool = False,
    lock: Sequence[str] = (),
) -> list[WindowRow]:
    """`calendar_window`'s rows as read (see `load_calendars`; `book_window` compares them)."""
    # Tuples, not dicts: a window of weeks is thousands of rows (dict rows cost ~6% of such
    # an availability request).
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(
        "SELECT * FROM calendar_window(%s, %s::uuid[], %s, %s, %s::uuid[], %s, %s::uuid[], %s, %s,"
        " %s::bigint[])",
        (*_window_args(catalog, resources, window, exclude, spans_only), pg_array(lock_keys(lock))),
    )
    return await cur.fetchall()


# calendar_window's row: entry, resource, lo, hi, ref, minutes, n, day (see migration 0009).
WindowRow = tuple[Any, ...]
_WINDOW_COLUMNS = ("entry", "rid", "lo", "hi", "ref", "minutes", "n", "day")


def rows_about(rows: Iterable[WindowRow], resource_ids: Collection[str]) -> list[WindowRow]:
    """The rows of a window read about ``resource_ids`` (and the catalog version): what a read
    of only those resources would have returned."""
    return [row for row in rows if row[1] is None or row[1] in resource_ids]


def pg_array(items: Iterable[str | int]) -> str:
    """An array of UUIDs or integers as PostgreSQL's text form: the service's one way to pass
    ids or lock keys (to a `%s::uuid[]` or `%s::bigint[]` placeholder; text arrays, such as
    skills, go as lists). psycopg's list dumper works out the element type and dumps each
    element in Python: `calendar_window`'s and `book_window`'s four arrays each cost a hold +
    confirmation ~0.25M instructions. It is still a bound parameter, never SQL text; the check
    keeps out any element that would need quoting in an array, or change its shape."""
    elements = [str(item) for item in items]
    if not all(map(_PLAIN_ELEMENT.fullmatch, elements)):
        raise ValueError(f"not UUIDs or integers: {elements[:5]!r}")
    return "{" + ",".join(elements) + "}"


_PLAIN_ELEMENT = re.compile(r"[0-9a-fA-F-]+")


def _window_args(
    catalog: Catalog,
    resources: Mapping[str, Resource],
    window: Interval,
    exclude: Sequence[str],
    spans_only: bool,
) -> tuple[Any, ...]:
    """`calendar_window`'s arguments but the lock keys."""
    limited = [
        rid
        for rid, r in resources.items()
        if r.daily_capacity is not None or r.daily_minutes is not None
    ]
    return (
        catalog.tenant_id,
        pg_array(resources),
        # Bounds, not a Range: psycopg spends ~0.03 ms of CPU more dumping a Range.
        window.start,
        window.end,
        pg_array(exclude),
        spans_only,
        pg_array(limited),
        # Local days of any zone touching the window lie within a day of its UTC dates.
        (window.start - timedelta(days=1)).date(),
        (window.end + timedelta(days=1)).date(),
    )


def calendars_of(
    catalog: Catalog, resources: Mapping[str, Resource], rows: Iterable[WindowRow]
) -> tuple[int, dict[str, ResourceCalendar]]:
    """The catalog version and the calendars in `calendar_window`'s ``rows``."""
    ids = list(resources)
    version: int | None = None
    busy: dict[str, list[Busy]] = {rid: [] for rid in ids}
    loads: dict[str, dict[date, tuple[int, int]]] = {rid: {} for rid in ids}
    for entry, rid, lo, hi, ref, minutes, n, day in rows:
        if entry == "version":
            version = int(n)
        elif entry == "load":
            loads[rid][day] = (int(n), int(minutes))
        else:
            busy[rid].append(Busy(Interval(lo, hi), ref, _BUSY_KINDS[entry], minutes=minutes))
    if version is None:
        raise NotFound("tenant not found")
    return version, {
        rid: ResourceCalendar(resources[rid], catalog.hours.get(rid, ()), busy[rid], loads[rid])
        for rid in ids
    }


_BUSY_KINDS = {
    "booking": BusyKind.BOOKING,
    "time_off": BusyKind.TIME_OFF,
    "external": BusyKind.EXTERNAL,
}


# --- bookings --------------------------------------------------------------------------------
def lock_keys(resource_ids: Iterable[str]) -> list[int]:
    """Layer 2's advisory-lock keys for ``resource_ids``: sorted, so that locks taken in their
    order follow one global order and two bookings over the same resources in opposite orders
    cannot deadlock."""
    keys = sorted({uuid.UUID(rid).int >> 64 for rid in resource_ids})
    return [k - (1 << 64) if k >= 1 << 63 else k for k in keys]  # as signed bigints


async def lock_resources(conn: Conn, resource_ids: Iterable[str]) -> None:
    """Layer 2: transaction-scoped advisory locks on ``resource_ids`` (see `lock_keys`)."""
    # unnest yields in array order, and the select list is evaluated row by row in that order.
    await conn.execute(
        "SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) AS k",
        (pg_array(lock_keys(resource_ids)),),
    )


@dataclass(frozen=True, slots=True)
class NewBooking:
    id: str
    service_id: str
    start: datetime
    end: datetime
    customer: str
    created_by: str
    resources: tuple[
        tuple[int, str, Interval, date], ...
    ]  # (req index, resource, footprint, local day)
    minutes: int
    series_id: str | None = None
    recurrence_id: datetime | None = None
    rescheduled_from: str | None = None
    hold_nonce: str | None = None  # the hold it was confirmed from (see `BookingService`)


async def insert_bookings(conn: Conn, tenant_id: str, bookings: Sequence[NewBooking]) -> datetime:
    """Insert ``bookings`` and their resource rows (`insert_bookings`, migration 0010); returns
    their `created_at` (the transaction's start, which every booking of one transaction
    shares). A violation is raised here: the statement's answer is read before this returns."""
    cur = await conn.execute(
        "SELECT insert_bookings(%s, %s, %s) AS created_at",
        (tenant_id, *_booking_documents(bookings)),
    )
    row = await cur.fetchone()
    assert row is not None, "a SELECT of one function call returned no row"
    created_at: datetime = row["created_at"]
    return created_at


def _booking_documents(bookings: Sequence[NewBooking]) -> tuple[str, str]:
    """``bookings`` and their resource rows as the two JSON documents `insert_bookings` takes:
    one `to_json` each, cheaper than binding a parameter per column per row."""
    rows = [
        {
            "id": b.id,
            "service_id": b.service_id,
            "starts_at": b.start,
            "ends_at": b.end,
            "customer": b.customer,
            "created_by": b.created_by,
            "series_id": b.series_id,
            "recurrence_id": b.recurrence_id,
            "rescheduled_from": b.rescheduled_from,
            "hold_nonce": b.hold_nonce,
        }
        for b in bookings
    ]
    links = [
        {
            "booking_id": b.id,
            "resource_id": rid,
            "requirement_index": index,
            "service_id": b.service_id,
            "lo": fp.start,
            "hi": fp.end,
            "local_day": day,
            "minutes": b.minutes,
        }
        for b in bookings
        for index, rid, fp, day in b.resources
    ]
    return to_json(rows), to_json(links)


async def book_window(
    conn: Conn,
    catalog: Catalog,
    resources: Mapping[str, Resource],
    window: Interval,
    seen: Sequence[WindowRow],
    booking: NewBooking,
    idempotency: tuple[str, bytes] | None,
    answer: Mapping[str, Any],
    event: Mapping[str, Any],
) -> DictRow | None:
    """Book ``booking`` in one statement outside any transaction (`book_window`, migration
    0010) if, under the advisory locks of ``resources``, ``window`` reads as ``seen`` (the rows
    of an unlocked `read_window` of the same resources and window); with it ``idempotency``
    (key, request fingerprint) is claimed, ``answer`` (but its `created_at`) remembered and
    ``event`` audited. Returns the function's row: its `outcome` is "booked" (`response`: the
    answer as stored), "replay" (the key's stored `status`, `response` and `request_hash`) or
    "changed" (nothing written). A violation is raised here."""
    key, request_hash = idempotency if idempotency is not None else (None, None)
    seen_objects = [dict(zip(_WINDOW_COLUMNS, row, strict=True)) for row in seen]
    cur = await conn.execute(
        "SELECT * FROM book_window(%s, %s::uuid[], %s, %s, %s::uuid[], %s, %s::uuid[], %s, %s,"
        " %s::bigint[], %s, %s, %s, %s, %s, %s, %s)",
        (
            *_window_args(catalog, resources, window, (), False),
            pg_array(lock_keys(resources)),
            to_json(seen_objects),
            key,
            request_hash,
            *_booking_documents([booking]),
            to_json(answer),
            to_json(event),
        ),
    )
    return await cur.fetchone()


def inserted_row(booking: NewBooking, created_at: datetime | None) -> dict[str, Any]:
    """The row `get_booking` would read back for a booking just inserted, without the read."""
    return {
        "id": booking.id,
        "service_id": booking.service_id,
        "status": "confirmed",
        "starts_at": booking.start,
        "ends_at": booking.end,
        "customer": booking.customer,
        "series_id": booking.series_id,
        "recurrence_id": booking.recurrence_id,
        "created_at": created_at,
        "cancelled_at": None,
        "rescheduled_from": booking.rescheduled_from,
        "resources": [
            {"requirement": index, "resource_id": rid}
            for index, rid, _, _ in sorted(booking.resources, key=lambda r: (r[0], r[1]))
        ],
    }


BOOKING_SELECT = (
    "SELECT b.id::text, b.service_id::text, b.status, b.starts_at, b.ends_at, b.customer,"
    " b.series_id::text, b.recurrence_id, b.created_at, b.cancelled_at,"
    " b.rescheduled_from::text, b.hold_nonce,"
    " coalesce((SELECT json_agg(json_build_object('requirement', br.requirement_index,"
    "   'resource_id', br.resource_id) ORDER BY br.requirement_index, br.resource_id)"
    "  FROM booking_resources br WHERE br.booking_id = b.id), '[]') AS resources"
    " FROM bookings b"
)


async def get_booking(conn: Conn, booking_id: str, for_update: bool = False) -> dict[str, Any]:
    lock = " FOR UPDATE OF b" if for_update else ""
    cur = await conn.execute(f"{BOOKING_SELECT} WHERE b.id = %s{lock}", (booking_id,))
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"booking {booking_id} not found", booking_id=booking_id)
    return dict(row)


async def list_bookings(
    conn: Conn, window: Interval, status: str | None, limit: int
) -> list[dict[str, Any]]:
    # The last condition follows from the others (an appointment lasts at most a day,
    # migration 0007); it keeps the scan off the tenant's history.
    where = "b.starts_at < %s AND b.ends_at > %s AND b.starts_at > %s - interval '24 hours'"
    params: list[Any] = [window.end, window.start, window.start]
    if status:
        where += " AND b.status = %s"
        params.append(status)
    cur = await conn.execute(
        f"{BOOKING_SELECT} WHERE {where} ORDER BY b.starts_at, b.id LIMIT %s", [*params, limit]
    )
    return [dict(r) for r in await cur.fetchall()]


async def cancel_bookings(conn: Conn, booking_ids: Sequence[str]) -> None:
    await conn.execute(
        "UPDATE bookings SET status = 'cancelled', cancelled_at = now()"
        " WHERE id = ANY(%s::uuid[]) AND status = 'confirmed'",
        (pg_array(booking_ids),),
    )
    await conn.execute(
        "UPDATE booking_resources SET active = false WHERE booking_id = ANY(%s::uuid[])",
        (pg_array(booking_ids),),
    )


async def insert_series(
    conn: Conn,
    tenant_id: str,
    series_id: str,
    service_id: str,
    zone: str,
    starts_local: datetime,
    rrule: str,
    horizon_until: datetime,
    customer: str,
) -> None:
    await conn.execute(
        "INSERT INTO booking_series"
        " (id, tenant_id, service_id, zone, starts_local, rrule, horizon_until, customer)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (series_id, tenant_id, service_id, zone, starts_local, rrule, horizon_until, customer),
    )


async def get_series(conn: Conn, series_id: str) -> dict[str, Any]:
    cur = await conn.execute(
        "SELECT id::text, service_id::text, zone, starts_local, rrule, horizon_until, status,"
        " customer, created_at"
        " FROM booking_series WHERE id = %s",
        (series_id,),
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"series {series_id} not found", series_id=series_id)
    series = dict(row)
    cur = await conn.execute(
        f"{BOOKING_SELECT} WHERE b.series_id = %s ORDER BY b.starts_at", (series_id,)
    )
    series["bookings"] = [dict(r) for r in await cur.fetchall()]
    return series


async def cancel_series(conn: Conn, series_id: str, after: datetime) -> list[str]:
    await conn.execute("UPDATE booking_series SET status = 'cancelled' WHERE id = %s", (series_id,))
    cur = await conn.execute(
        "SELECT id::text FROM bookings"
        " WHERE series_id = %s AND status = 'confirmed' AND starts_at >= %s",
        (series_id, after),
    )
    ids = [row["id"] for row in await cur.fetchall()]
    await cancel_bookings(conn, ids)
    return ids


async def audit_feed(
    conn: Conn,
    after: tuple[int, int],
    limit: int,
    writes_only: bool = False,
    entity: str | None = None,
) -> list[dict[str, Any]]:
    """Events after the cursor ``after`` = (transaction, event id), in that order, of
    transactions older than every one still running (see migration 0005)."""
    where: list[str] = [
        "(xact, id) > (%s::xid8, %s)",
        "xact < pg_snapshot_xmin(pg_current_snapshot())",
    ]
    params: list[Any] = [str(after[0]), after[1]]
    if writes_only:  # the activity feed: reads are audited too (`is_read`, migration 0008)
        where.append("NOT is_read")
    if entity:
        where.append("entity = %s")
        params.append(entity)
    # Qualified, so the sort is by the xid8 column: in ORDER BY an output column of the same
    # name (as text) would win, and "100" sorts before "99".
    cur = await conn.execute(
        "SELECT id, xact::text AS cursor_xact, at, actor, action, entity, entity_id, request_id,"
        f" detail FROM audit_events WHERE {' AND '.join(where)}"
        " ORDER BY audit_events.xact, audit_events.id LIMIT %s",
        [*params, limit],
    )
    return [dict(r) for r in await cur.fetchall()]
