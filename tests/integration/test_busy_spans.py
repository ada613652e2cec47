"""Busy time read by window (`load_calendars`): for every window, the entries must be exactly
those of all the tenant's entries that overlap it (touching is not overlapping), and availability's
merged spans (`spans_only=True`) must leave each resource exactly the free time the entries give.

The tenant gets back-to-back bookings (which merge), a booking apart, and exceptions of two
kinds overlapping them (which do not merge across kinds); hypothesis picks the windows."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.calendar import ResourceCalendar
from engine.intervals import Interval
from engine.model import Busy
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
ALL_DAY = Interval(MONDAY - timedelta(days=1), MONDAY + timedelta(days=2))  # every entry


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=QUARTER_HOURS, length=st.integers(1, 56))
def test_merged_busy_time_leaves_the_same_free_time(
    infra: Infra, busy_tenant: Tenant, first: int, length: int
) -> None:
    window = Interval(
        MONDAY + timedelta(minutes=15 * first), MONDAY + timedelta(minutes=15 * (first + length))
    )
    span = (int(window.start.timestamp()), int(window.end.timestamp()))

    async def read() -> tuple[
        dict[str, ResourceCalendar], dict[str, ResourceCalendar], dict[str, ResourceCalendar]
    ]:
        db = await Database.open(infra.app_url, 1, 1)
        try:
            async with db.transaction(busy_tenant.id) as conn:
                catalog = await repo.CatalogCache().get(conn, busy_tenant.id)
                everything = await repo.load_calendars(conn, catalog, catalog.resources, ALL_DAY)
                entries = await repo.load_calendars(conn, catalog, catalog.resources, window)
                merged = await repo.load_calendars(
                    conn, catalog, catalog.resources, window, spans_only=True
                )
        finally:
            await db.close()
        return everything, entries, merged

    everything, entries, merged = asyncio.run(read())
    for rid, calendar in entries.items():
        overlapping = [
            b
            for b in everything[rid].busy_entries()
            if b.interval.start < window.end and b.interval.end > window.start
        ]
        assert sorted(map(_key, calendar.busy_entries())) == sorted(map(_key, overlapping))
    assert {rid: cal.free_spans(span) for rid, cal in merged.items()} == {
        rid: cal.free_spans(span) for rid, cal in entries.items()
    }


def _key(entry: Busy) -> tuple[str, str, datetime, datetime]:
    return entry.ref, entry.kind.value, entry.interval.start, entry.interval.end
