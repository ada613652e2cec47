"""Daily capacity, re-checked under the advisory lock and counted per local day of the resource.

Capacity is what the exclusion constraint cannot express: bookings at distinct times never
overlap, so only the check made under the lock stands between a staff member and a fourth
appointment on a day that allows three.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import psycopg

from tests.integration.conftest import Api, Infra
from tests.integration.invariants import (
    active_bookings,
    assert_problem,
    overlaps,
    post,
    statuses,
    together,
)
from tests.integration.tenancy import make_tenant

NEW_YORK = "America/New_York"
AUCKLAND = "Pacific/Auckland"
MONDAY = date(2027, 1, 11)

# Confirmed bookings of one resource whose start falls on a local day of `zone`; the day is
# computed here from `starts_at`, not read from the service's own `local_day` column.
ON_LOCAL_DAY_SQL = """
SELECT b.id::text
  FROM bookings b JOIN booking_resources br ON br.booking_id = b.id
 WHERE br.resource_id = %s AND b.status = 'confirmed'
   AND (b.starts_at AT TIME ZONE %s)::date = %s
"""


def local(day: date, hour: int, minute: int, zone: str) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZoneInfo(zone))


def utc_iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def booked_on(admin_url: str, resource_id: str, zone: str, day: date) -> set[str]:
    with psycopg.connect(admin_url) as conn:
        rows = conn.execute(ON_LOCAL_DAY_SQL, (resource_id, zone, day)).fetchall()
    return {r[0] for r in rows}


def test_100_parallel_bookings_against_capacity_3_confirm_exactly_3(api: Api, infra: Infra) -> None:
    """100 direct bookings over the 32 quarter-hour starts of one working day (three or four
    per start, so overlap and capacity both bite) race on a staff member allowed 3 a day."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(
            client,
            api.admin_headers(),
            rooms=0,
            daily_capacity=3,
            service={
                "name": "Quick trim",
                "duration_minutes": 15,
                "step_minutes": 15,
                "requirements": [{"kind": "staff", "skills": ["colour"]}],
            },
        )
    (staff,) = tenant.staff
    opening = local(MONDAY, 9, 0, NEW_YORK)
    starts = [utc_iso(opening + timedelta(minutes=15 * k)) for k in range(32)]  # 09:00-16:45
    sent = [starts[i % len(starts)] for i in range(100)]
    calls = [
        post(
            "/v1/bookings",
            {"service_id": tenant.service_id, "start": start, "customer": f"c{i}"},
            tenant.headers,
        )
        for i, start in enumerate(sent)
    ]

    responses = together(api.base_url, calls)

    assert statuses(responses) == {201: 3, 409: 97}, [r.text for r in responses[:3]]
    won = {start for start, r in zip(sent, responses, strict=True) if r.status_code == 201}
    assert len(won) == 3  # three distinct starts: same-start winners would overlap
    for start, r in zip(sent, responses, strict=True):
        if r.status_code != 409:
            continue
        body = r.json()
        if start in won:
            # Lost the time itself (or, as well, the day): either answer is honest.
            assert body["type"].rsplit("/", 1)[1] in ("slot-conflict", "capacity-exceeded"), body
        else:
            # Nobody holds this time: only the day's capacity can refuse it.
            assert_problem(r, 409, "capacity-exceeded")
            assert body["why"]["reason"] == "capacity_reached", body
    created = {r.json()["id"] for r in responses if r.status_code == 201}
    assert active_bookings(infra.admin_url, tenant.id) == created
    assert booked_on(infra.admin_url, staff, NEW_YORK, MONDAY) == created
    assert overlaps(infra.admin_url) == []


def test_capacity_counts_the_staff_members_local_day_not_the_utc_date(
    api: Api, infra: Infra
) -> None:
    """Auckland in January is UTC+13. 09:00 and 15:00 on Monday there fall on two UTC dates
    (Sunday 20:00Z, Monday 02:00Z) but one Auckland day, so capacity 1 refuses the second;
    Tuesday 09:00 (Monday 20:00Z, the UTC date of the refused one) is a new day and succeeds.
    Counting per UTC date would get both answers wrong."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers(), zone=AUCKLAND, rooms=0, daily_capacity=1)
        (staff,) = tenant.staff
        first, second = local(MONDAY, 9, 0, AUCKLAND), local(MONDAY, 15, 0, AUCKLAND)
        tuesday = local(MONDAY + timedelta(days=1), 9, 0, AUCKLAND)
        assert first.astimezone(UTC).date() != second.astimezone(UTC).date()
        assert tuesday.astimezone(UTC).date() == second.astimezone(UTC).date()

        def book(start: datetime) -> httpx.Response:
            return client.post(
                "/v1/bookings",
                json={"service_id": tenant.service_id, "start": utc_iso(start)},
                headers=tenant.headers,
            )

        r1 = book(first)
        assert r1.status_code == 201, r1.text
        refused = book(second)
        body = assert_problem(refused, 409, "capacity-exceeded")
        assert body["why"]["reason"] == "capacity_reached", body
        assert body["why"]["resources"] == [{"resource_id": staff, "date": MONDAY.isoformat()}]
        r3 = book(tuesday)
        assert r3.status_code == 201, r3.text

    assert active_bookings(infra.admin_url, tenant.id) == {r1.json()["id"], r3.json()["id"]}
    assert booked_on(infra.admin_url, staff, AUCKLAND, MONDAY) == {r1.json()["id"]}
    assert overlaps(infra.admin_url) == []
