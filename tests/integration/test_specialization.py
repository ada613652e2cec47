"""Strict specialization: a staff member serves only services whose required skills they hold.

The API refuses with a 422 naming the missing skill (direct booking, hold, queue assignment);
below it, the `booking_resources_specialization` trigger refuses the link itself for any code
path — checked here as the service role, inside a tenant transaction, with plain SQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from tests.integration.conftest import Api, Infra
from tests.integration.invariants import active_bookings, assert_problem, row_counts
from tests.integration.tenancy import WEEKDAYS, Tenant, make_tenant

NY = "America/New_York"
AppConn = psycopg.Connection[TupleRow]
TONING = [{"kind": "staff", "skills": ["colour", "toning"]}, {"kind": "room"}]


def monday_ahead(weeks: int = 4) -> date:
    day = datetime.now(UTC).date() + timedelta(weeks=weeks)
    return day + timedelta(days=-day.weekday() % 7)


MONDAY = monday_ahead()


def at(hour: int, minute: int = 0, day: date = MONDAY) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=ZoneInfo(NY)).astimezone(UTC)


def text(instant: datetime) -> str:
    return instant.isoformat().replace("+00:00", "Z")


def add_staff(client: httpx.Client, tenant: Tenant, name: str, skills: list[str]) -> str:
    r = client.post(
        "/v1/resources",
        json={
            "kind": "staff",
            "name": name,
            "zone": NY,
            "skills": skills,
            "working_hours": [
                {"starts_local": "2026-01-05T09:00:00", "duration_minutes": 480, "rrule": WEEKDAYS}
            ],
        },
        headers=tenant.headers,
    )
    assert r.status_code == 201, r.text
    rid: str = r.json()["id"]
    return rid


def add_service(client: httpx.Client, tenant: Tenant, skills: list[str]) -> str:
    r = client.post(
        "/v1/services",
        json={
            "name": " + ".join(skills),
            "duration_minutes": 60,
            "step_minutes": 30,
            "requirements": [{"kind": "staff", "skills": skills}, {"kind": "room"}],
        },
        headers=tenant.headers,
    )
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


def names_missing(body: dict[str, Any], rid: str, skills: list[str]) -> None:
    """The 422 names the resource and exactly the skills it lacks, in prose and as data."""
    assert body["field"] == "resource_ids", body
    assert body["missing_skills"] == {rid: skills}, body
    assert f"resource {rid} lacks skills: {', '.join(skills)}" in body["detail"], body


def test_the_api_refuses_an_unqualified_staff_member_naming_the_missing_skill(
    api: Api, infra: Infra
) -> None:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers())  # Staff 0: colour; Room 0
        junior = add_staff(client, tenant, "Junior", ["cut"])
        (room,) = tenant.rooms
        pinned = {
            "service_id": tenant.service_id,
            "start": text(at(10)),
            "resource_ids": [junior, room],
        }
        body = assert_problem(
            client.post("/v1/bookings", json=pinned, headers=tenant.headers), 422, "invalid-input"
        )
        names_missing(body, junior, ["colour"])
        body = assert_problem(
            client.post("/v1/holds", json=pinned, headers=tenant.headers), 422, "invalid-input"
        )
        names_missing(body, junior, ["colour"])

        # Only the skill actually missing is named: Staff 0 has colour, lacks balayage.
        balayage = add_service(client, tenant, ["colour", "balayage"])
        r = client.post(
            "/v1/bookings",
            json={**pinned, "service_id": balayage, "resource_ids": [tenant.staff[0], room]},
            headers=tenant.headers,
        )
        names_missing(assert_problem(r, 422, "invalid-input"), tenant.staff[0], ["balayage"])

        # Unpinned, with nobody qualified: the requirement and its skills are named.
        r = client.post(
            "/v1/bookings",
            json={"service_id": balayage, "start": text(at(10))},
            headers=tenant.headers,
        )
        why = assert_problem(r, 422, "slot-unavailable")["why"]
        assert why["reason"] == "no_qualified_resource"
        assert why["requirement"] == 0
        assert "balayage" in why["detail"], why

        # A queue assignment is validated the same way, and the entry keeps waiting.
        entry = client.post(
            "/v1/queue",
            json={
                "service_id": tenant.service_id,
                "earliest": text(at(9)),
                "latest": text(at(12)),
            },
            headers=tenant.headers,
        ).json()
        r = client.post(
            f"/v1/queue/{entry['id']}/assign",
            json={"start": text(at(10)), "resource_ids": [junior]},
            headers=tenant.headers,
        )
        names_missing(assert_problem(r, 422, "invalid-input"), junior, ["colour"])
        still = client.get(f"/v1/queue/{entry['id']}", headers=tenant.headers).json()
        assert still["status"] == "waiting"

        # The qualified staff member books the same start without complaint.
        ok = client.post(
            "/v1/bookings",
            json={**pinned, "resource_ids": [tenant.staff[0], room]},
            headers=tenant.headers,
        )
        assert ok.status_code == 201, ok.text
    assert active_bookings(infra.admin_url, tenant.id) == {ok.json()["id"]}
    assert row_counts(infra.admin_url, tenant.id)["booking_resources"] == 2


# --- the database trigger -----------------------------------------------------------------------
@pytest.fixture
def salon(api: Api) -> Iterator[tuple[Tenant, str, str]]:
    """A tenant (Staff 0 with colour, Room 0, the colour service), a junior without colour,
    and one booking made through the API at 10:00 on Staff 0 and Room 0."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers())
        junior = add_staff(client, tenant, "Junior", ["cut"])
        r = client.post(
            "/v1/bookings",
            json={"service_id": tenant.service_id, "start": text(at(10))},
            headers=tenant.headers,
        )
        assert r.status_code == 201, r.text
    yield tenant, junior, r.json()["id"]


@contextmanager
def tenant_transaction(app_url: str, tenant_id: str, commit: bool = False) -> Iterator[AppConn]:
    """The service role in a transaction scoped like the service's own (SET LOCAL); rolled
    back at the end unless ``commit``."""
    with psycopg.connect(app_url) as conn, conn.transaction(force_rollback=not commit):
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant_id,))
        yield conn


def new_booking(conn: AppConn, tenant_id: str, service_id: str, start: datetime) -> str:
    booking_id = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO bookings (id, tenant_id, service_id, status, starts_at, ends_at)"
        " VALUES (%s, %s, %s, 'confirmed', %s, %s)",
        (booking_id, tenant_id, service_id, start, start + timedelta(hours=1)),
    )
    return booking_id


def link(
    conn: AppConn,
    tenant: Tenant,
    booking_id: str,
    resource_id: str,
    requirement: int,
    start: datetime,
    service_id: str | None = None,
) -> None:
    conn.execute(
        "INSERT INTO booking_resources (tenant_id, booking_id, resource_id, requirement_index,"
        " service_id, during, local_day, minutes)"
        " VALUES (%s, %s, %s, %s, %s, tstzrange(%s, %s), %s, 60)",
        (
            tenant.id,
            booking_id,
            resource_id,
            requirement,
            service_id or tenant.service_id,
            start,
            start + timedelta(hours=1),
            start.astimezone(ZoneInfo(NY)).date(),
        ),
    )


def refused(conn: AppConn, match: str) -> Any:
    """Expect the specialization trigger to refuse what runs in the block (in a savepoint)."""

    @contextmanager
    def block() -> Iterator[None]:
        with (
            pytest.raises(psycopg.errors.CheckViolation, match=match) as caught,
            conn.transaction(),
        ):
            yield
        assert caught.value.diag.constraint_name == "specialization"

    return block()


def test_the_database_refuses_linking_an_unqualified_resource(
    infra: Infra, salon: tuple[Tenant, str, str]
) -> None:
    tenant, junior, booked = salon
    (staff,), (room,) = tenant.staff, tenant.rooms
    before = row_counts(infra.admin_url, tenant.id)
    with tenant_transaction(infra.app_url, tenant.id) as conn:
        booking_id = new_booking(conn, tenant.id, tenant.service_id, at(14))
        with refused(conn, f"resource {junior} lacks skills: colour"):
            link(conn, tenant, booking_id, junior, 0, at(14))
        with refused(conn, f"resource {room} is a room, requirement 0 needs a staff"):
            link(conn, tenant, booking_id, room, 0, at(14))
        with refused(conn, "matches no requirement 2"):
            link(conn, tenant, booking_id, staff, 2, at(14))
        # Re-pointing an existing link at the junior is refused too (UPDATE of resource_id).
        with refused(conn, "lacks skills: colour"):
            conn.execute(
                "UPDATE booking_resources SET resource_id = %s"
                " WHERE booking_id = %s AND requirement_index = 0",
                (junior, booked),
            )
        # The qualified pair links fine: the refusals above were the trigger's, nothing else.
        link(conn, tenant, booking_id, staff, 0, at(14))
        link(conn, tenant, booking_id, room, 1, at(14))
    assert row_counts(infra.admin_url, tenant.id) == before
    with psycopg.connect(infra.admin_url) as admin:
        links = admin.execute(
            "SELECT resource_id::text FROM booking_resources WHERE booking_id = %s", (booked,)
        ).fetchall()
    assert {r[0] for r in links} == {staff, room}


def test_skill_and_requirement_changes_bind_every_later_assignment(
    api: Api, infra: Infra, salon: tuple[Tenant, str, str]
) -> None:
    """Staff 0 loses colour; then the service also demands toning. Each change is made in SQL
    (the API has no edit for either), as the service role: the API sees it at once (the
    catalog cache is versioned by trigger) and the database refuses new links that break it."""
    tenant, junior, _ = salon
    (staff,), (room,) = tenant.staff, tenant.rooms
    with tenant_transaction(infra.app_url, tenant.id, commit=True) as conn:
        conn.execute("UPDATE resources SET skills = '{cut}' WHERE id = %s", (staff,))
        conn.execute("UPDATE resources SET skills = '{cut,colour}' WHERE id = %s", (junior,))
    with httpx.Client(base_url=api.base_url, timeout=30, headers=tenant.headers) as client:
        pinned = {"service_id": tenant.service_id, "start": text(at(12)), "resource_ids": [staff]}
        r = client.post("/v1/bookings", json=pinned)
        names_missing(assert_problem(r, 422, "invalid-input"), staff, ["colour"])
        # Unpinned, the junior (qualified now) is the one chosen.
        r = client.post(
            "/v1/bookings", json={"service_id": tenant.service_id, "start": text(at(12))}
        )
        assert r.status_code == 201, r.text
        assert {x["resource_id"] for x in r.json()["resources"]} == {junior, room}
    with tenant_transaction(infra.app_url, tenant.id) as conn:
        booking_id = new_booking(conn, tenant.id, tenant.service_id, at(14))
        with refused(conn, f"resource {staff} lacks skills: colour"):
            link(conn, tenant, booking_id, staff, 0, at(14))

    with tenant_transaction(infra.app_url, tenant.id, commit=True) as conn:
        conn.execute(
            "UPDATE services SET requirements = %s WHERE id = %s",
            (Jsonb(TONING), tenant.service_id),
        )
    with httpx.Client(base_url=api.base_url, timeout=30, headers=tenant.headers) as client:
        r = client.post(
            "/v1/bookings",
            json={"service_id": tenant.service_id, "start": text(at(15)), "resource_ids": [junior]},
        )
        names_missing(assert_problem(r, 422, "invalid-input"), junior, ["toning"])
    with tenant_transaction(infra.app_url, tenant.id) as conn:
        booking_id = new_booking(conn, tenant.id, tenant.service_id, at(15))
        with refused(conn, f"resource {junior} lacks skills: toning"):
            link(conn, tenant, booking_id, junior, 0, at(15))
        with refused(conn, f"resource {staff} lacks skills: colour, toning"):
            link(conn, tenant, booking_id, staff, 0, at(15))
