"""Busy time is read by window without reading a resource's history (migration 0007).

Under Row Level Security a range condition (`during && ...`) cannot search an index, so each
read of a window used to go through every booking and exception the resource ever had: each
hold, each confirmation under its lock, each availability request grew with the calendar's
past. Here a staff member has two years of history behind the window asked about, and the
database must fetch only what overlaps the window — counted by PostgreSQL itself for the
transaction (`pg_stat_xact_user_tables`), whatever plan it picks. Listing bookings by window had
the same flaw for another reason: only the window's end bounded its index scan."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from engine.intervals import Interval
from service import repository as repo
from service.db import Database
from tests.integration.conftest import Api, Infra
from tests.integration.invariants import fetched_rows
from tests.integration.tenancy import Tenant, make_tenant

WINDOW = Interval(datetime(2027, 3, 1, tzinfo=UTC), datetime(2027, 3, 8, tzinfo=UTC))
LO, HI = WINDOW.start, WINDOW.end
HOUR, QUARTER = timedelta(hours=1), timedelta(minutes=15)
HISTORY = 3000  # bookings every 5 hours before the window, and as many after it
# The reads are bounded by the longest footprint (48 hours: a day's appointment and 12 hours
# of buffers each side) and the longest appointment (24 hours). At those edges, the first
# staff member's footprint and the second one's appointment end a quarter hour into the window.
EDGE_FOOTPRINT = (LO - 48 * HOUR + QUARTER, LO + QUARTER)
EDGE_APPOINTMENT = (LO - 24 * HOUR + QUARTER, LO + QUARTER)
INSIDE = (LO + 24 * HOUR, LO + 25 * HOUR)
TIME_OFF = (LO - 2 * HOUR, LO + HOUR)


@pytest.fixture(scope="module")
def tenant_with_history(api: Api, infra: Infra) -> Iterator[Tenant]:
    """Two staff members. The first has the history and the future bookings; beside the past
    ones an exception each, and for a month ahead too (a resource's past exceptions grow, its
    future holds few: exceptions, which have no longest span, are searched from the window's
    start on). Inserted in bulk, as the admin."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers(), staff=2, rooms=0)
    first, second = tenant.staff
    params = {"t": tenant.id, "s": tenant.service_id, "lo": LO, "hi": HI, "first": first}
    with psycopg.connect(infra.admin_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TEMP TABLE calendar (id uuid, resource_id uuid, kind text,"
            " appointment tstzrange, footprint tstzrange)"
        )
        conn.execute(
            "INSERT INTO calendar SELECT gen_random_uuid(), %(first)s, 'booking', r, r"
            " FROM generate_series(1, %(n)s) AS n, LATERAL (VALUES"
            "  (tstzrange(%(lo)s - interval '50 hours' - (n - 1) * interval '5 hours',"
            "             %(lo)s - interval '49 hours' - (n - 1) * interval '5 hours')),"
            "  (tstzrange(%(hi)s + n * interval '5 hours',"
            "             %(hi)s + n * interval '5 hours' + interval '1 hour'))) AS v (r)",
            {**params, "n": HISTORY},
        )
        edge_appointment_of_footprint = (
            EDGE_FOOTPRINT[0] + 12 * HOUR,
            EDGE_FOOTPRINT[1] - 12 * HOUR,
        )
        for rid, kind, appointment, footprint in (
            (first, "booking", edge_appointment_of_footprint, EDGE_FOOTPRINT),
            (first, "booking", INSIDE, INSIDE),
            (second, "booking", EDGE_APPOINTMENT, EDGE_APPOINTMENT),
            (first, "time_off", None, TIME_OFF),
        ):
            conn.execute(
                "INSERT INTO calendar VALUES (gen_random_uuid(), %s, %s,"
                " tstzrange(%s, %s), tstzrange(%s, %s))",
                (rid, kind, *(appointment or (None, None)), *footprint),
            )
        conn.execute(
            "INSERT INTO calendar SELECT gen_random_uuid(), resource_id, 'external', NULL,"
            "  tstzrange(upper(appointment) + interval '1 hour',"
            "            upper(appointment) + interval '2 hours')"
            " FROM calendar WHERE resource_id = %(first)s AND kind = 'booking'"
            "  AND (upper(appointment) < %(lo)s - interval '48 hours'"
            "       OR lower(appointment) BETWEEN %(hi)s AND %(hi)s + interval '30 days')",
            params,
        )
        conn.execute(
            "INSERT INTO bookings (id, tenant_id, service_id, status, starts_at, ends_at)"
            " SELECT id, %(t)s, %(s)s, 'confirmed', lower(appointment), upper(appointment)"
            " FROM calendar WHERE kind = 'booking'",
            params,
        )
        conn.execute(
            "INSERT INTO booking_resources (tenant_id, booking_id, resource_id,"
            "   requirement_index, service_id, during, local_day, minutes)"
            " SELECT %(t)s, id, resource_id, 0, %(s)s, footprint, lower(appointment)::date, 60"
            " FROM calendar WHERE kind = 'booking'",
            params,
        )
        conn.execute(
            "INSERT INTO resource_exceptions (id, tenant_id, resource_id, kind, during)"
            " SELECT id, %(t)s, resource_id, kind, footprint FROM calendar"
            " WHERE kind <> 'booking'",
            params,
        )
        conn.execute("ANALYZE bookings, booking_resources, resource_exceptions")
    yield tenant


@pytest.mark.parametrize("spans_only", [False, True], ids=["entries", "merged spans"])
def test_a_window_read_fetches_no_history(
    infra: Infra, tenant_with_history: Tenant, spans_only: bool
) -> None:
    first = tenant_with_history.staff[0]

    async def read() -> tuple[list[tuple[str, datetime, datetime]], dict[str, int]]:
        db = await Database.open(infra.app_url, 1, 1)
        try:
            async with db.transaction(tenant_with_history.id) as conn:
                catalog = await repo.CatalogCache().get(conn, tenant_with_history.id)
                _, calendars = await repo.load_calendars(
                    conn, catalog, {first: catalog.resources[first]}, WINDOW, spans_only=spans_only
                )
                fetched = await fetched_rows(conn)
        finally:
            await db.close()
        busy = [
            (b.kind.value, b.interval.start, b.interval.end)
            for b in calendars[first].busy_entries()
        ]
        return busy, fetched

    busy, fetched = asyncio.run(read())
    assert sorted(busy) == [
        ("booking", *EDGE_FOOTPRINT),
        ("booking", *INSIDE),
        ("time_off", *TIME_OFF),
    ]
    # Exactly what overlaps the window. Before: all 6,002 bookings and 3,145 exceptions.
    assert fetched["booking_resources"] <= 2, fetched["booking_resources"]
    assert fetched["resource_exceptions"] <= 1, fetched["resource_exceptions"]


def test_listing_a_window_fetches_no_history(infra: Infra, tenant_with_history: Tenant) -> None:
    async def read() -> tuple[list[dict[str, Any]], dict[str, int]]:
        db = await Database.open(infra.app_url, 1, 1)
        try:
            async with db.transaction(tenant_with_history.id) as conn:
                listed = await repo.list_bookings(conn, WINDOW, None, limit=100)
                return listed, await fetched_rows(conn)
        finally:
            await db.close()

    listed, fetched = asyncio.run(read())
    assert [(b["starts_at"], b["ends_at"]) for b in listed] == [EDGE_APPOINTMENT, INSIDE]
    # Fetched: those two. Before: all 6,003, from the tenant's first booking on.
    assert fetched["bookings"] <= 2, fetched["bookings"]


def test_listing_from_the_first_year_is_answered(api: Api, tenant_with_history: Tenant) -> None:
    """The window's lower bound less a day is computed by PostgreSQL, which has years before
    year 1; Python's datetime has none."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        r = client.get(
            "/v1/bookings",
            params={"from": "0001-01-01T00:00:00Z", "to": LO.isoformat(), "limit": 1},
            headers=tenant_with_history.headers,
        )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("null_at", range(4), ids=["ids", "exclude", "limited", "lock keys"])
def test_calendar_window_refuses_a_null_array(infra: Infra, null_at: int) -> None:
    """A NULL array must not read as "nothing": `NOT booking_id = ANY(NULL)` is NULL, which
    would drop every booking and show a booked slot free."""
    arrays: list[list[Any] | None] = [["00000000-0000-4000-8000-000000000001"], [], [], []]
    arrays[null_at] = None
    ids, exclude, limited, keys = arrays
    with psycopg.connect(infra.app_url) as conn, pytest.raises(psycopg.errors.NullValueNotAllowed):
        conn.execute(
            "SELECT * FROM calendar_window(gen_random_uuid(), %s::uuid[], %s, %s, %s::uuid[],"
            " false, %s::uuid[], %s, %s, %s::bigint[])",
            (
                ids,
                WINDOW.start,
                WINDOW.end,
                exclude,
                limited,
                WINDOW.start.date(),
                WINDOW.end.date(),
                keys,
            ),
        )
