"""The booking strategies of the contention study against live servers.

"holds" (the default) is the three-layer protocol; "pessimistic" and "constraint" switch
layer 1 (and, for "constraint", layer 2) off. They exist to be measured, and they must still
never double-book: the exclusion constraint stands under all three.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest

from service.booking import strategy_from
from service.infra import Endpoints
from service.server import ServerSecrets, running_server
from tests.integration.conftest import Api, Infra
from tests.integration.invariants import active_bookings, overlaps, post, statuses, together
from tests.integration.tenancy import make_tenant

MONDAY_10_NY = "2026-12-07T15:00:00Z"  # 10:00 in New York (EST)
RACERS = 60


@pytest.fixture(scope="module", params=["pessimistic", "constraint"])
def study_api(request: pytest.FixtureRequest, infra: Infra) -> Iterator[tuple[str, Api]]:
    """A live two-worker server running one of the study strategies."""
    strategy: str = request.param
    keys = ServerSecrets("test-admin-" + secrets.token_hex(16), secrets.token_hex(32))
    endpoints = Endpoints(infra.admin_url, infra.app_url, infra.redis_url)
    with running_server(endpoints, keys, workers=2, booking_strategy=strategy) as base_url:
        yield strategy, Api(base_url, keys.admin_key)


def test_the_default_strategy_is_holds(api: Api) -> None:
    """The shipped default takes exclusive holds: a second hold on a held slot is a 409."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers())
        body = {"service_id": tenant.service_id, "start": MONDAY_10_NY}
        first = client.post("/v1/holds", json=body, headers=tenant.headers)
        second = client.post("/v1/holds", json=body, headers=tenant.headers)
    assert first.status_code == 201 and first.json()["degraded"] is False
    assert second.status_code == 409, second.text
    assert [c["kind"] for c in second.json()["why"]["conflicts"]] == ["hold"]


def test_unknown_strategies_are_refused() -> None:
    with pytest.raises(ValueError, match="pessimistic"):
        strategy_from("optimistic")


def test_study_strategies_hold_without_exclusivity(study_api: tuple[str, Api]) -> None:
    """Layer 1 is off: two holds on one slot both succeed, marked non-exclusive."""
    _, api = study_api
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers())
        body = {"service_id": tenant.service_id, "start": MONDAY_10_NY}
        holds = [client.post("/v1/holds", json=body, headers=tenant.headers) for _ in range(2)]
    assert [h.status_code for h in holds] == [201, 201]
    assert all(h.json()["degraded"] for h in holds)


def test_study_strategies_never_double_book(study_api: tuple[str, Api], infra: Infra) -> None:
    """RACERS clients confirm their own (non-exclusive) holds on one slot at the same moment,
    and as many book it directly: exactly one booking, every other answer a 409."""
    strategy, api = study_api
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers())
        body = {"service_id": tenant.service_id, "start": MONDAY_10_NY}
        held = [client.post("/v1/holds", json=body, headers=tenant.headers) for _ in range(RACERS)]
    assert {h.status_code for h in held} == {201}
    calls = [post("/v1/bookings", {"hold_id": h.json()["id"]}, tenant.headers) for h in held]
    calls += [
        post("/v1/bookings", {**body, "customer": f"c{i}"}, tenant.headers) for i in range(RACERS)
    ]

    responses = together(api.base_url, calls)

    assert statuses(responses) == {201: 1, 409: 2 * RACERS - 1}, strategy
    winners = {r.json()["id"] for r in responses if r.status_code == 201}
    assert active_bookings(infra.admin_url, tenant.id) == winners
    assert overlaps(infra.admin_url) == []


def test_what_a_concurrent_uncommitted_booking_does(
    study_api: tuple[str, Api], infra: Infra
) -> None:
    """An admin transaction books the staff member and stays open. "pessimistic" waits on the
    resource row (the insert's foreign-key lock), then re-reads and refuses; "constraint"
    takes no lock, inserts, waits on the exclusion constraint, and is refused by it."""
    strategy, api = study_api
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers(), rooms=0, service=STAFF_ONLY)
    staff = tenant.staff[0]
    body = {"service_id": tenant.service_id, "start": MONDAY_10_NY, "resource_ids": [staff]}
    with (
        psycopg.connect(infra.admin_url) as admin,
        httpx.Client(base_url=api.base_url, timeout=30) as client,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        booking_id = insert_booking(admin, tenant.id, tenant.service_id, staff, MONDAY_10_NY)
        pending = pool.submit(client.post, "/v1/bookings", json=body, headers=tenant.headers)
        wait_for_a_lock_wait(infra.admin_url)
        admin.commit()
        answer = pending.result(timeout=30)

    assert answer.status_code == 409, answer.text
    why = answer.json()["why"]
    if strategy == "constraint":
        assert why == {"reason": "conflict", "layer": "constraint"}
    else:
        assert why["reason"] == "conflict" and "layer" not in why
        assert [c["ref"] for c in why["conflicts"]] == [booking_id]
    assert active_bookings(infra.admin_url, tenant.id) == {booking_id}
    assert overlaps(infra.admin_url) == []


STAFF_ONLY = {
    "name": "Cut",
    "duration_minutes": 60,
    "requirements": [{"kind": "staff", "skills": ["colour"]}],
}


def insert_booking(
    admin: psycopg.Connection[tuple[object, ...]],
    tenant_id: str,
    service_id: str,
    resource_id: str,
    start: str,
) -> str:
    """Book one hour on a resource with plain SQL, in the admin's open transaction."""
    booking_id = str(uuid.uuid4())
    admin.execute(
        "INSERT INTO bookings (id, tenant_id, service_id, status, starts_at, ends_at)"
        " VALUES (%s, %s, %s, 'confirmed', %s::timestamptz, %s::timestamptz + interval '1 hour')",
        (booking_id, tenant_id, service_id, start, start),
    )
    admin.execute(
        "INSERT INTO booking_resources (tenant_id, booking_id, resource_id, requirement_index,"
        " service_id, during, local_day, minutes) VALUES (%s, %s, %s, 0, %s,"
        " tstzrange(%s::timestamptz, %s::timestamptz + interval '1 hour'),"
        " (%s::timestamptz AT TIME ZONE 'America/New_York')::date, 60)",
        (tenant_id, booking_id, resource_id, service_id, start, start, start),
    )
    return booking_id


def wait_for_a_lock_wait(admin_url: str) -> None:
    """Return once a backend of the service waits for a heavyweight lock (20 s at most)."""
    deadline = time.monotonic() + 20
    with psycopg.connect(admin_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE usename = 'slotwise_app' AND wait_event_type = 'Lock'"
            ).fetchone()
            if row is not None and row[0] > 0:
                return
            time.sleep(0.02)
    raise AssertionError("no service backend ever waited for a lock")
