"""Busy time read by window (`load_calendars`): for every window, the entries must be exactly
those whose ranges overlap it by PostgreSQL's own range operator (touching is not overlapping),
and availability's merged spans (`spans_only=True`) must leave each resource exactly the free
time the entries give.

The tenant gets back-to-back bookings (which merge), a booking apart, and exceptions of two
kinds overlapping them (which do not merge across kinds); hypothesis picks the windows."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.calendar import ResourceCalendar
from engine.intervals import Interval
from service import repository as repo
from service.db import Database
from tests.integration.conftest import Api, Infra
from tests.integration.tenancy import Tenant, make_tenant

MONDAY = datetime(2026, 12, 7, 14, 0, tzinfo=UTC)  # 09:00 in New York


@pytest.fixture(scope="module")
def busy_tenant(api: Api) -> Iterator[Tenant]:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers())
        pins = [tenant.staff[0], tenant.rooms[0]]
        for hours in (1, 2, 3, 6):  # 10:00, 11:00, 12:00 back to back; 15:00 apart
            start = (MONDAY + timedelta(hours=hours)).isoformat()
            r = client.post(
                "/v1/bookings",
                json={"service_id": tenant.service_id, "start": start, "resource_ids": pins},
                headers=tenant.headers,
            )
            assert r.status_code == 201, r.text
        for kind, lo, hi in (("time_off", 2.5, 4), ("external", 3.5, 5), ("time_off", 3.75, 4.5)):
            r = client.post(
                f"/v1/resources/{tenant.staff[0]}/exceptions",
                json={
                    "kind": kind,
                    "start": (MONDAY + timedelta(hours=lo)).isoformat(),
                    "end": (MONDAY + timedelta(hours=hi)).isoformat(),
                },
                headers=tenant.headers,
            )
            assert r.status_code == 201, r.text
        yield tenant


QUARTER_HOURS = st.integers(-8, 48)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=QUARTER_HOURS, length=st.integers(1, 56))
def test_a_window_reads_what_overlaps_it_and_merging_keeps_the_free_time(
    infra: Infra, busy_tenant: Tenant, first: int, length: int
) -> None:
    window = Interval(
        MONDAY + timedelta(minutes=15 * first), MONDAY + timedelta(minutes=15 * (first + length))
    )
    span = (int(window.start.timestamp()), int(window.end.timestamp()))

    async def read() -> tuple[dict[str, ResourceCalendar], dict[str, ResourceCalendar]]:
        db = await Database.open(infra.app_url, 1, 1)
        try:
            async with db.transaction(busy_tenant.id) as conn:
                catalog = await repo.CatalogCache().get(conn, busy_tenant.id)
                _, entries = await repo.load_calendars(conn, catalog, catalog.resources, window)
                _, merged = await repo.load_calendars(
                    conn, catalog, catalog.resources, window, spans_only=True
                )
        finally:
            await db.close()
        return entries, merged

    entries, merged = asyncio.run(read())
    read_by_window = {
        (rid, b.kind.value, b.ref, b.interval.start, b.interval.end)
        for rid, calendar in entries.items()
        for b in calendar.busy_entries()
    }
    assert read_by_window == overlapping(infra.admin_url, busy_tenant.id, window)
    assert {rid: cal.free_spans(span) for rid, cal in merged.items()} == {
        rid: cal.free_spans(span) for rid, cal in entries.items()
    }


def overlapping(
    admin_url: str, tenant_id: str, window: Interval
) -> set[tuple[str, str, str, datetime, datetime]]:
    """The reference: the tenant's entries whose ranges overlap the window, by the range
    operator itself (as the admin, whom Row Level Security does not restrict)."""
    with psycopg.connect(admin_url) as conn:
        rows = conn.execute(
            "SELECT resource_id::text, kind, id::text, lower(during), upper(during)"
            " FROM resource_exceptions"
            " WHERE tenant_id = %(t)s AND during && tstzrange(%(lo)s, %(hi)s)"
            " UNION ALL SELECT resource_id::text, 'booking', booking_id::text, lower(during),"
            " upper(during) FROM booking_resources"
            " WHERE tenant_id = %(t)s AND active AND during && tstzrange(%(lo)s, %(hi)s)",
            {"t": tenant_id, "lo": window.start, "hi": window.end},
        ).fetchall()
    return set(rows)
