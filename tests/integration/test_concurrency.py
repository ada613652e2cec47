"""No double booking under real concurrency, against the live two-worker server.

Every test fires its requests together (threads released by one barrier after their
connections are open), then checks the answers *and* the database: no two active bookings
overlap on a resource, and every 201 a client saw is a confirmed booking (nothing
acknowledged is lost, nothing unacknowledged is kept).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from tests.integration.conftest import Api, Infra
from tests.integration.invariants import (
    active_bookings,
    lock_key,
    overlaps,
    post,
    row_counts,
    statuses,
    together,
)
from tests.integration.tenancy import Tenant, make_tenant

MONDAY_10_NY = "2026-12-07T15:00:00Z"  # 10:00 in New York (EST)
MONDAY_1030_NY = "2026-12-07T15:30:00Z"


def created_ids(responses: list[httpx.Response]) -> set[str]:
    return {r.json()["id"] for r in responses if r.status_code == 201}


def test_200_concurrent_confirmations_of_one_slot_book_it_once(api: Api, infra: Infra) -> None:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers())
    body = {"service_id": tenant.service_id, "start": MONDAY_10_NY}
    calls = [
        post("/v1/bookings", {**body, "customer": f"c{i}"}, tenant.headers) for i in range(200)
    ]

    responses = together(api.base_url, calls)

    assert statuses(responses) == {201: 1, 409: 199}, [r.text for r in responses[:3]]
    for r in responses:
        if r.status_code == 409:
            assert r.json()["type"].endswith("slot-conflict")
    winners = created_ids(responses)
    assert active_bookings(infra.admin_url, tenant.id) == winners
    assert row_counts(infra.admin_url, tenant.id)["bookings"] == 1
    assert overlaps(infra.admin_url) == []


def test_opposite_pin_orders_on_two_staff_never_deadlock(api: Api, infra: Infra) -> None:
    """A service needing two staff; clients pin the pairs AB, BA, BC, CB, CA, AC at two
    overlapping starts. Any two of these requests share a staff member and overlap, so exactly
    one can win; the others must get a 409 promptly, not a deadlock (a 500) or a hang."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(
            client,
            api.admin_headers(),
            staff=3,
            rooms=0,
            service={
                "name": "Duo",
                "duration_minutes": 60,
                "step_minutes": 30,
                "requirements": [{"kind": "staff", "skills": ["colour"], "count": 2}],
            },
        )
    a, b, c = tenant.staff
    pairs = [[a, b], [b, a], [b, c], [c, b], [c, a], [a, c]]
    calls = [
        post(
            "/v1/bookings",
            {"service_id": tenant.service_id, "start": start, "resource_ids": pins},
            tenant.headers,
        )
        for _ in range(4)
        for start in (MONDAY_10_NY, MONDAY_1030_NY)
        for pins in pairs
    ]

    began = time.monotonic()
    responses = together(api.base_url, calls, timeout=30)

    assert time.monotonic() - began < 30
    assert statuses(responses) == {201: 1, 409: len(calls) - 1}
    assert active_bookings(infra.admin_url, tenant.id) == created_ids(responses)
    assert overlaps(infra.admin_url) == []


def test_staff_and_room_pinned_in_conflicting_orders(api: Api, infra: Infra) -> None:
    """Staff + room with every (staff, room) pairing pinned in both list orders, at two
    overlapping starts. Compatible bookings are disjoint pairs, and every maximal set of them
    has exactly two members ({S0R0, S1R1} or {S0R1, S1R0}): so exactly two 201s."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers(), staff=2, rooms=2)
    pins = [
        [staff, room] if flip else [room, staff]
        for staff in tenant.staff
        for room in tenant.rooms
        for flip in (True, False)
    ]
    calls = [
        post(
            "/v1/bookings",
            {"service_id": tenant.service_id, "start": start, "resource_ids": pin},
            tenant.headers,
        )
        for _ in range(3)
        for start in (MONDAY_10_NY, MONDAY_1030_NY)
        for pin in pins
    ]

    responses = together(api.base_url, calls, timeout=30)

    assert statuses(responses) == {201: 2, 409: len(calls) - 2}
    winners = created_ids(responses)
    assert active_bookings(infra.admin_url, tenant.id) == winners
    booked = [
        {res["resource_id"] for res in r.json()["resources"]}
        for r in responses
        if r.status_code == 201
    ]
    assert booked[0].isdisjoint(booked[1])
    assert overlaps(infra.admin_url) == []


def test_concurrent_retries_with_one_idempotency_key_book_once(api: Api, infra: Infra) -> None:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers())
    headers = {**tenant.headers, "Idempotency-Key": "retry-storm-1"}
    body = {"service_id": tenant.service_id, "start": MONDAY_10_NY, "customer": "Ada"}

    responses = together(api.base_url, [post("/v1/bookings", body, headers)] * 20)

    assert statuses(responses) == {201: 20}
    first = responses[0].json()
    assert all(r.json() == first for r in responses)
    assert active_bookings(infra.admin_url, tenant.id) == {first["id"]}
    counts = row_counts(infra.admin_url, tenant.id)
    assert counts["bookings"] == 1
    assert counts["idempotency_keys"] == 1

    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        # A later retry replays the first answer too ...
        again = client.post("/v1/bookings", json=body, headers=headers)
        assert again.status_code == 201
        assert again.json() == first
        # ... and the same key on another request is refused, not silently replayed.
        other = client.post("/v1/bookings", json={**body, "start": MONDAY_1030_NY}, headers=headers)
        assert other.status_code == 422
        assert other.headers["content-type"].startswith("application/problem+json")
        assert other.json()["type"].endswith("idempotency-key-reused")
    assert row_counts(infra.admin_url, tenant.id)["bookings"] == 1


def test_exclusion_constraint_alone_refuses_an_overlap(api: Api, infra: Infra) -> None:
    """Layer 3 without layers 1 and 2: the app role inserting two overlapping footprints on one
    resource directly, with no advisory lock, gets an exclusion violation."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers(), rooms=0)
    staff = tenant.staff[0]
    with psycopg.connect(infra.app_url) as conn:
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant.id,))
        for n, (lo, hi) in enumerate(
            [("2026-12-08 15:00Z", "2026-12-08 16:00Z"), ("2026-12-08 15:30Z", "2026-12-08 16:30Z")]
        ):
            booking_id = f"00000000-0000-4000-8000-00000000000{n}"
            conn.execute(
                "INSERT INTO bookings (id, tenant_id, service_id, status, starts_at, ends_at)"
                " VALUES (%s, %s, %s, 'confirmed', %s, %s)",
                (booking_id, tenant.id, tenant.service_id, lo, hi),
            )
            insert = (
                "INSERT INTO booking_resources (tenant_id, booking_id, resource_id,"
                " requirement_index, service_id, during, local_day, minutes)"
                " VALUES (%s, %s, %s, 0, %s, tstzrange(%s, %s), '2026-12-08', 60)"
            )
            params = (tenant.id, booking_id, staff, tenant.service_id, lo, hi)
            if n == 0:
                conn.execute(insert, params)
            else:
                with pytest.raises(psycopg.errors.ExclusionViolation):
                    conn.execute(insert, params)
        conn.rollback()
    assert row_counts(infra.admin_url, tenant.id)["bookings"] == 0


def test_a_stale_snapshot_is_replanned_not_refused(api: Api, infra: Infra) -> None:
    """An unpinned direct booking picks a staff member from a snapshot, then waits for that
    member's lock; meanwhile someone books that member. Under the lock the re-check fails, and
    the request must re-plan onto the other, still free, staff member — not answer 409."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers(), staff=2, rooms=0)
    keys = {lock_key(rid): rid for rid in tenant.staff}
    body = {"service_id": tenant.service_id, "start": MONDAY_10_NY}

    def book_it(admin: psycopg.Connection[tuple[object, ...]], key: int) -> None:
        take_directly(admin, tenant.id, tenant.service_id, keys[key], MONDAY_10_NY)

    waited, answer = post_while_locked(infra, api, set(keys), "/v1/bookings", body, tenant, book_it)

    chosen = keys[waited]
    assert answer.status_code == 201, answer.text
    other = next(rid for rid in tenant.staff if rid != chosen)
    assert answer.json()["resources"] == [{"requirement": 0, "resource_id": other}]
    assert overlaps(infra.admin_url) == []


def test_confirming_a_hold_waits_for_its_resources_locks(api: Api, infra: Infra) -> None:
    """Layer 2 on the held path: the confirmation takes the advisory lock of every resource
    its hold names (in the statement that re-reads their calendars) and waits while another
    transaction holds one."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers())
        body = {"service_id": tenant.service_id, "start": MONDAY_10_NY}
        hold = client.post("/v1/holds", json=body, headers=tenant.headers)
    assert hold.status_code == 201, hold.text
    keys = {lock_key(r["resource_id"]) for r in hold.json()["resources"]}
    confirm = {"hold_id": hold.json()["id"]}

    waited, answer = post_while_locked(infra, api, keys, "/v1/bookings", confirm, tenant)

    assert waited in keys
    assert answer.status_code == 201, answer.text
    assert overlaps(infra.admin_url) == []


def post_while_locked(
    infra: Infra,
    api: Api,
    keys: set[int],
    path: str,
    body: dict[str, object],
    tenant: Tenant,
    meanwhile: Callable[[psycopg.Connection[tuple[object, ...]], int], None] = lambda *_: None,
) -> tuple[int, httpx.Response]:
    """POST while an admin session holds the advisory locks ``keys``. Once the request waits
    for one, ``meanwhile(admin, that key)`` runs, then every lock is released. Returns the key
    the request waited for and its answer."""
    with (
        psycopg.connect(infra.admin_url, autocommit=True) as admin,
        httpx.Client(base_url=api.base_url, timeout=30) as client,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        for key in keys:
            admin.execute("SELECT pg_advisory_lock(%s)", (key,))
        pending = pool.submit(client.post, path, json=body, headers=tenant.headers)
        waited = awaited_advisory_key(admin)
        meanwhile(admin, waited)
        admin.execute("SELECT pg_advisory_unlock_all()")
        return waited, pending.result(timeout=30)


def awaited_advisory_key(admin: psycopg.Connection[tuple[object, ...]]) -> int:
    """The (signed bigint) advisory key some backend is waiting for."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        row = admin.execute(
            "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks"
            " WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()
        if row is not None:
            key = int(str(row[0]))
            return key - (1 << 64) if key >= 1 << 63 else key
        time.sleep(0.02)
    raise AssertionError("no backend waited for an advisory lock")


def take_directly(
    admin: psycopg.Connection[tuple[object, ...]],
    tenant_id: str,
    service_id: str,
    resource_id: str,
    start: str,
) -> None:
    """Book a resource with plain SQL (as the admin, holding its lock), one hour from start."""
    booking_id = str(uuid.uuid4())
    with admin.transaction():
        admin.execute(
            "INSERT INTO bookings (id, tenant_id, service_id, status, starts_at, ends_at)"
            " VALUES (%s, %s, %s, 'confirmed', %s::timestamptz,"
            " %s::timestamptz + interval '1 hour')",
            (booking_id, tenant_id, service_id, start, start),
        )
        admin.execute(
            "INSERT INTO booking_resources (tenant_id, booking_id, resource_id, requirement_index,"
            " service_id, during, local_day, minutes) VALUES (%s, %s, %s, 0, %s,"
            " tstzrange(%s::timestamptz, %s::timestamptz + interval '1 hour'),"
            " (%s::timestamptz AT TIME ZONE 'America/New_York')::date, 60)",
            (tenant_id, booking_id, resource_id, service_id, start, start, start),
        )
