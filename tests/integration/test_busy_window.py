"""Busy time is read by window without reading a resource's history (migration 0007).

Under Row Level Security a range condition (`during && ...`) cannot search an index, so each
read of a window used to go through every booking and exception the resource ever had: each
hold, each confirmation under its lock, each availability request grew with the calendar's
past. Here a staff member has two years of history behind the window asked about, and the
database must fetch only what lies near the window — counted by PostgreSQL itself for the
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

HISTORY = 3000  # bookings, and as many exceptions, before the window
WINDOW = Interval(datetime(2027, 3, 1, tzinfo=UTC), datetime(2027, 3, 8, tzinfo=UTC))


@pytest.fixture(scope="module")
def tenant_with_history(api: Api, infra: Infra) -> Iterator[Tenant]:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers(), rooms=0)
    staff = tenant.staff[0]
    # The history goes in as the admin, in bulk: a booking and an exception every 5 hours
    # before the window, and one booking a day into it.
    params = {"t": tenant.id, "s": tenant.service_id, "r": staff, "w": WINDOW.start}
    with psycopg.connect(infra.admin_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TEMP TABLE history AS SELECT gen_random_uuid() AS id, at"
            " FROM unnest(array_append(ARRAY(SELECT %(w)s - n * interval '5 hours'"
            "   FROM generate_series(1, %(n)s) AS n), %(w)s + interval '1 day')) AS at",
            {**params, "n": HISTORY},
        )
        conn.execute(
            "INSERT INTO bookings (id, tenant_id, service_id, status, starts_at, ends_at)"
            " SELECT id, %(t)s, %(s)s, 'confirmed', at, at + interval '1 hour' FROM history",
            params,
        )
        conn.execute(
            "INSERT INTO booking_resources (tenant_id, booking_id, resource_id,"
            "   requirement_index, service_id, during, local_day, minutes)"
            " SELECT %(t)s, id, %(r)s, 0, %(s)s, tstzrange(at, at + interval '1 hour'),"
            "   at::date, 60 FROM history",
            params,
        )
        conn.execute(
            "INSERT INTO resource_exceptions (id, tenant_id, resource_id, kind, during)"
            " SELECT gen_random_uuid(), %(t)s, %(r)s, 'external',"
            "   tstzrange(at + interval '2 hours', at + interval '3 hours')"
            " FROM history WHERE at < %(w)s",
            params,
        )
        conn.execute("ANALYZE bookings, booking_resources, resource_exceptions")
    yield tenant


@pytest.mark.parametrize("spans_only", [False, True], ids=["entries", "merged spans"])
def test_a_window_read_fetches_no_history(
    infra: Infra, tenant_with_history: Tenant, spans_only: bool
) -> None:
    async def read() -> tuple[list[tuple[str, datetime]], dict[str, int]]:
        db = await Database.open(infra.app_url, 1, 1)
        try:
            async with db.transaction(tenant_with_history.id) as conn:
                catalog = await repo.CatalogCache().get(conn, tenant_with_history.id)
                resources = {rid: catalog.resources[rid] for rid in tenant_with_history.staff}
                calendars = await repo.load_calendars(
                    conn, catalog, resources, WINDOW, spans_only=spans_only
                )
                fetched = await fetched_rows(conn)
        finally:
            await db.close()
        busy = [
            (b.kind.value, b.interval.start) for c in calendars.values() for b in c.busy_entries()
        ]
        return busy, fetched

    busy, fetched = asyncio.run(read())
    assert busy == [("booking", WINDOW.start + timedelta(days=1))]
    # Catalog reads touch neither table; the window holds one booking and no exception.
    assert fetched.get("booking_resources", 0) <= 1, fetched.get("booking_resources")
    assert fetched.get("resource_exceptions", 0) == 0, fetched.get("resource_exceptions")


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
    assert [b["starts_at"] for b in listed] == [WINDOW.start + timedelta(days=1)]
    # Fetched: the window's booking and the 4 of the history's (one every 5 hours) that start
    # in the day before it, the only ones that could still overlap it. Before: all 3,001.
    assert fetched["bookings"] <= 5, fetched["bookings"]
