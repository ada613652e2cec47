"""Tenant isolation, through the API and in the database itself, and the append-only audit trail.

Tenant A's key must see, change and count nothing of tenant B's. Below the API, Row Level
Security must do the filtering on its own: the service role running a query with no tenant
filter at all still sees one tenant only, and nothing without a tenant set.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest
from psycopg.rows import TupleRow

from tests.integration.conftest import Api, Infra
from tests.integration.invariants import active_bookings, assert_problem, row_counts
from tests.integration.tenancy import Tenant, make_tenant

WINDOW = {"from": "2026-12-01T00:00:00Z", "to": "2027-01-01T00:00:00Z"}
TENANT_TABLES = (
    "api_keys",
    "resources",
    "working_hours",
    "services",
    "bookings",
    "booking_resources",
    "booking_series",
    "audit_events",
)
AppConn = psycopg.Connection[TupleRow]


@dataclass
class Booked:
    tenant: Tenant
    booking_id: str
    series_id: str


@dataclass
class Pair:
    a: Booked
    b: Booked


def book(client: httpx.Client, tenant: Tenant) -> Booked:
    r = client.post(
        "/v1/bookings",
        json={"service_id": tenant.service_id, "start": "2026-12-07T15:00:00Z"},
        headers=tenant.headers,
    )
    assert r.status_code == 201, r.text
    s = client.post(
        "/v1/series",
        json={
            "service_id": tenant.service_id,
            "starts_local": "2026-12-15T13:00:00",
            "rrule": "FREQ=WEEKLY;COUNT=2",
        },
        headers=tenant.headers,
    )
    assert s.status_code == 201, s.text
    return Booked(tenant, r.json()["id"], s.json()["id"])


@pytest.fixture(scope="module")
def pair(api: Api) -> Iterator[Pair]:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        a = book(client, make_tenant(client, api.admin_headers()))
        b = book(client, make_tenant(client, api.admin_headers(), staff=2))
    yield Pair(a, b)


def test_a_key_reads_nothing_of_another_tenant(api: Api, pair: Pair) -> None:
    a, b = pair.a.tenant, pair.b.tenant
    with httpx.Client(base_url=api.base_url, timeout=30, headers=a.headers) as client:
        for path in (
            f"/v1/bookings/{pair.b.booking_id}",
            f"/v1/resources/{b.staff[0]}",
            f"/v1/resources/{b.rooms[0]}",
            f"/v1/services/{b.service_id}",
            f"/v1/series/{pair.b.series_id}",
        ):
            assert_problem(client.get(path), 404, "not-found")
        assert_problem(
            client.get(f"/v1/services/{b.service_id}/availability", params=WINDOW),
            404,
            "not-found",
        )

        bookings = client.get("/v1/bookings", params=WINDOW).json()
        series = client.get(f"/v1/series/{pair.a.series_id}").json()
        assert {x["id"] for x in bookings} == {
            pair.a.booking_id,
            *(x["id"] for x in series["bookings"]),
        }
        resources = client.get("/v1/resources").json()
        assert {x["id"] for x in resources} == {*a.staff, *a.rooms}
        assert [x["id"] for x in client.get("/v1/services").json()] == [a.service_id]
        assert client.get("/v1/tenant").json()["id"] == a.id
        keys = client.get("/v1/api-keys").json()
        assert len(keys) == 1  # only A's initial key, not B's

        # The audit feed is A's alone: it never names B's entities.
        feed = client.get("/v1/audit", params={"limit": 1000}).json()["events"]
        named = {e["entity_id"] for e in feed}
        assert a.service_id in named
        assert not named & {b.id, b.service_id, pair.b.booking_id, *b.staff, *b.rooms}


def test_a_key_changes_nothing_of_another_tenant(api: Api, infra: Infra, pair: Pair) -> None:
    a, b = pair.a.tenant, pair.b.tenant
    before = row_counts(infra.admin_url, b.id)
    with httpx.Client(base_url=api.base_url, timeout=30, headers=a.headers) as client:
        assert_problem(client.post(f"/v1/bookings/{pair.b.booking_id}/cancel"), 404, "not-found")
        assert_problem(
            client.post(
                f"/v1/bookings/{pair.b.booking_id}/reschedule",
                json={"start": "2026-12-08T15:00:00Z"},
            ),
            404,
            "not-found",
        )
        assert_problem(client.post(f"/v1/series/{pair.b.series_id}/cancel"), 404, "not-found")
        # Booking B's service, or A's service on B's resources.
        direct = {"service_id": b.service_id, "start": "2026-12-09T15:00:00Z"}
        assert_problem(client.post("/v1/bookings", json=direct), 404, "not-found")
        assert_problem(client.post("/v1/holds", json=direct), 404, "not-found")
        pinned = {
            "service_id": a.service_id,
            "start": "2026-12-09T15:00:00Z",
            "resource_ids": [b.staff[0], b.rooms[0]],
        }
        assert_problem(client.post("/v1/bookings", json=pinned), 422, "invalid-input")
        assert_problem(client.post("/v1/holds", json=pinned), 422, "invalid-input")
        # B's resources cannot be given hours or time off by A.
        assert_problem(
            client.post(
                f"/v1/resources/{b.staff[0]}/exceptions",
                json={
                    "kind": "time_off",
                    "start": "2026-12-07T00:00:00Z",
                    "end": "2026-12-08T00:00:00Z",
                },
            ),
            404,
            "not-found",
        )
        assert_problem(
            client.post(
                f"/v1/resources/{b.staff[0]}/working-hours",
                json={"starts_local": "2026-12-05T09:00:00", "duration_minutes": 60},
            ),
            404,
            "not-found",
        )
        b_key = client.get("/v1/api-keys", headers=b.headers).json()[0]["id"]
        assert_problem(client.delete(f"/v1/api-keys/{b_key}"), 404, "not-found")

    # Nothing of B's moved: same rows, its booking still confirmed, its key still working.
    assert row_counts(infra.admin_url, b.id) == before
    assert pair.b.booking_id in active_bookings(infra.admin_url, b.id)
    with httpx.Client(base_url=api.base_url, timeout=30, headers=b.headers) as client:
        assert client.get(f"/v1/bookings/{pair.b.booking_id}").json()["status"] == "confirmed"


def as_tenant(conn: AppConn, tenant_id: str) -> None:
    """What the service does per transaction: SET LOCAL app.tenant_id."""
    conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant_id,))


def count(conn: AppConn, table: str) -> int:
    # Deliberately no WHERE tenant_id: RLS alone must scope the answer. (table: a fixed name)
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def admin_count(admin_url: str, table: str, tenant_id: str) -> int:
    with psycopg.connect(admin_url) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM {table} WHERE tenant_id = %s", (tenant_id,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_row_level_security_scopes_queries_without_a_tenant_filter(
    infra: Infra, pair: Pair
) -> None:
    a, b = pair.a.tenant, pair.b.tenant
    expected = {t: admin_count(infra.admin_url, t, a.id) for t in TENANT_TABLES}
    assert expected["bookings"] == 3  # one booking and a two-occurrence series
    assert admin_count(infra.admin_url, "resources", b.id) == 3  # B has rows to leak
    with psycopg.connect(infra.app_url, autocommit=True) as conn:
        # The service role is no superuser, cannot bypass RLS and owns no table.
        role = conn.execute(
            "SELECT current_user, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert role == ("slotwise_app", False, False)
        owned = conn.execute(
            "SELECT count(*) FROM pg_tables"
            " WHERE schemaname = 'public' AND tableowner = current_user"
        ).fetchone()
        assert owned == (0,)

        with conn.transaction(force_rollback=True):
            as_tenant(conn, a.id)
            assert {t: count(conn, t) for t in TENANT_TABLES} == expected
            assert count(conn, "tenants") == 1
            row = conn.execute("SELECT count(*) FROM bookings WHERE tenant_id = %s", (b.id,))
            assert row.fetchone() == (0,)
            # Writes aimed at B's rows find nothing to change.
            updated = conn.execute(
                "UPDATE bookings SET customer = 'mallory' WHERE id = %s", (pair.b.booking_id,)
            )
            assert updated.rowcount == 0
            deleted = conn.execute(
                "DELETE FROM booking_resources WHERE booking_id = %s", (pair.b.booking_id,)
            )
            assert deleted.rowcount == 0

        with conn.transaction(force_rollback=True):  # no tenant set: nothing at all
            assert {t: count(conn, t) for t in (*TENANT_TABLES, "tenants")} == dict.fromkeys(
                (*TENANT_TABLES, "tenants"), 0
            )

        # Inserting a row for B while set to A breaks the policy's WITH CHECK.
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"),
            conn.transaction(),
        ):
            as_tenant(conn, a.id)
            conn.execute(
                "INSERT INTO resources (id, tenant_id, kind, name, zone)"
                " VALUES (gen_random_uuid(), %s, 'room', 'Intruder', 'UTC')",
                (b.id,),
            )
        # Re-pointing A's own row at B is refused too.
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"),
            conn.transaction(),
        ):
            as_tenant(conn, a.id)
            conn.execute("UPDATE services SET tenant_id = %s WHERE id = %s", (b.id, a.service_id))
    assert admin_count(infra.admin_url, "resources", b.id) == 3
    assert pair.b.booking_id in active_bookings(infra.admin_url, b.id)


def test_the_service_role_appends_and_reads_audit_events_but_never_rewrites_them(
    api: Api, infra: Infra, pair: Pair
) -> None:
    a, b = pair.a.tenant, pair.b.tenant
    # Reads through the API are audited too.
    with httpx.Client(base_url=api.base_url, timeout=30, headers=a.headers) as client:
        assert client.get(f"/v1/bookings/{pair.a.booking_id}").status_code == 200
        feed = client.get("/v1/audit", params={"limit": 1000}).json()["events"]
    assert ("booking.read", pair.a.booking_id) in {(e["action"], e["entity_id"]) for e in feed}
    assert ("booking.create", pair.a.booking_id) in {(e["action"], e["entity_id"]) for e in feed}

    with psycopg.connect(infra.app_url, autocommit=True) as conn:
        with conn.transaction(force_rollback=True):
            as_tenant(conn, a.id)
            conn.execute(
                "INSERT INTO audit_events (tenant_id, actor, action, entity)"
                " VALUES (%s, 'test', 'probe.write', 'probe')",
                (a.id,),
            )
            row = conn.execute(
                "SELECT count(*) FROM audit_events WHERE action = 'probe.write'"
            ).fetchone()
            assert row == (1,)
        for statement in (
            "UPDATE audit_events SET action = 'tampered'",
            "DELETE FROM audit_events",
            "TRUNCATE audit_events",
        ):
            with (
                pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"),
                conn.transaction(),
            ):
                as_tenant(conn, a.id)
                conn.execute(statement)
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"),
            conn.transaction(),
        ):
            as_tenant(conn, a.id)
            conn.execute(
                "INSERT INTO audit_events (tenant_id, actor, action, entity)"
                " VALUES (%s, 'test', 'forged', 'probe')",
                (b.id,),
            )
    with psycopg.connect(infra.admin_url) as admin:
        row = admin.execute(
            "SELECT count(*) FROM audit_events"
            " WHERE action IN ('tampered', 'forged', 'probe.write')"
        ).fetchone()
    assert row == (0,)
