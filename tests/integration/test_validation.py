"""Bad input gets a clear 4xx with a machine-readable `application/problem+json` body
(`type`, `title`, `status`, `detail`), and nothing is half-written."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import Api, Infra
from tests.integration.invariants import assert_problem, row_counts
from tests.integration.tenancy import WEEKDAYS, Tenant, make_tenant

MONDAY_10_NY = "2026-12-07T15:00:00Z"
UNKNOWN = str(uuid.UUID(int=0x5107_0000_0000_4000_8000_0000_0000_0001))


@pytest.fixture(scope="module")
def tenant(api: Api) -> Iterator[Tenant]:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        yield make_tenant(client, api.admin_headers())


@pytest.fixture
def client(api: Api, tenant: Tenant) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.base_url, timeout=30, headers=tenant.headers) as c:
        yield c


def staff_body(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "kind": "staff",
        "name": "New hire",
        "zone": "America/New_York",
        "working_hours": [
            {"starts_local": "2026-01-05T09:00:00", "duration_minutes": 480, "rrule": WEEKDAYS}
        ],
    }
    return {**body, **changes}


def availability(client: httpx.Client, tenant: Tenant, **params: object) -> httpx.Response:
    query = {"from": "2026-12-07T00:00:00Z", "to": "2026-12-08T00:00:00Z", **params}
    return client.get(f"/v1/services/{tenant.service_id}/availability", params=query)


def test_unknown_zones(api: Api, client: httpx.Client, tenant: Tenant) -> None:
    r = client.post(
        "/v1/tenants", json={"name": "x", "zone": "Mars/Olympus_Mons"}, headers=api.admin_headers()
    )
    assert "Mars/Olympus_Mons" in assert_problem(r, 422, "invalid-input")["detail"]
    assert_problem(
        client.post("/v1/resources", json=staff_body(zone="Atlantis/Capital")), 422, "invalid-input"
    )
    assert_problem(availability(client, tenant, zone="Nowhere/Land"), 422, "invalid-input")
    series = {
        "service_id": tenant.service_id,
        "starts_local": "2026-12-07T10:00:00",
        "rrule": "FREQ=WEEKLY;COUNT=2",
        "zone": "Europe/Nowhere",
    }
    assert_problem(client.post("/v1/series", json=series), 422, "invalid-input")
    # A fixed offset is not a zone: local-time concepts carry IANA names.
    assert_problem(client.post("/v1/resources", json=staff_body(zone="+02:00")), 422)


def test_ends_before_starts(client: httpx.Client, tenant: Tenant) -> None:
    backwards = availability(client, tenant, **{"from": "2026-12-08T00:00:00Z"}, to=MONDAY_10_NY)
    assert assert_problem(backwards, 422, "invalid-input")["field"] == "to"
    empty = availability(client, tenant, **{"from": MONDAY_10_NY}, to=MONDAY_10_NY)
    assert_problem(empty, 422, "invalid-input")
    listing = client.get(
        "/v1/bookings", params={"from": "2026-12-08T00:00:00Z", "to": MONDAY_10_NY}
    )
    assert_problem(listing, 422, "invalid-input")
    r = client.post(
        f"/v1/resources/{tenant.staff[0]}/exceptions",
        json={"kind": "time_off", "start": "2026-12-08T00:00:00Z", "end": "2026-12-07T00:00:00Z"},
    )
    assert assert_problem(r, 422, "invalid-input")["field"] == "end"
    assert client.get(f"/v1/resources/{tenant.staff[0]}").json()["exceptions"] == []


def test_unknown_ids(client: httpx.Client, tenant: Tenant) -> None:
    pinned = {"service_id": tenant.service_id, "start": MONDAY_10_NY, "resource_ids": [UNKNOWN]}
    for path in ("/v1/bookings", "/v1/holds"):
        r = client.post(path, json=pinned)
        assert UNKNOWN in assert_problem(r, 422, "invalid-input")["detail"]
    assert_problem(availability(client, tenant, resource_id=UNKNOWN), 422, "invalid-input")

    unknown_service = {"service_id": UNKNOWN, "start": MONDAY_10_NY}
    assert_problem(client.post("/v1/bookings", json=unknown_service), 404, "not-found")
    assert_problem(client.post("/v1/holds", json=unknown_service), 404, "not-found")
    assert_problem(client.get(f"/v1/services/{UNKNOWN}"), 404, "not-found")
    r = client.get(
        f"/v1/services/{UNKNOWN}/availability",
        params={"from": "2026-12-07T00:00:00Z", "to": "2026-12-08T00:00:00Z"},
    )
    assert_problem(r, 404, "not-found")
    series = {"service_id": UNKNOWN, "starts_local": "2026-12-07T10:00:00", "rrule": "FREQ=DAILY"}
    assert_problem(client.post("/v1/series", json=series), 404, "not-found")
    assert_problem(client.get(f"/v1/bookings/{UNKNOWN}"), 404, "not-found")
    assert_problem(client.post(f"/v1/bookings/{UNKNOWN}/cancel"), 404, "not-found")


def test_malformed_recurrence_rules(
    api: Api, infra: Infra, client: httpx.Client, tenant: Tenant
) -> None:
    before = row_counts(infra.admin_url, tenant.id)
    hours = [
        {"starts_local": "2026-01-05T09:00:00", "duration_minutes": 480, "rrule": WEEKDAYS},
        {"starts_local": "2026-01-05T09:00:00", "duration_minutes": 60, "rrule": "FREQ=SOMETIMES"},
    ]
    r = client.post("/v1/resources", json=staff_body(working_hours=hours))
    assert assert_problem(r, 422, "invalid-input")["field"] == "working_hours[1].rrule"
    # INTERVAL=0 used to be stored, then made every availability query of the service a 500.
    for rrule in (
        "BYDAY=ZZ",
        "FREQ=DAILY;INTERVAL=0",
        "FREQ=WEEKLY;COUNT=0",
        "FREQ=MONTHLY;BYMONTHDAY=0",  # dateutil reads it as every day
        "FREQ=SECONDLY",  # would expand to ~10^6 instances a fortnight
    ):
        r = client.post(
            f"/v1/resources/{tenant.staff[0]}/working-hours",
            json={"starts_local": "2026-12-05T09:00:00", "duration_minutes": 60, "rrule": rrule},
        )
        assert assert_problem(r, 422, "invalid-input")["field"] == "working_hours.rrule", rrule
    assert availability(client, tenant).status_code == 200
    for rrule in (
        "FREQ=WEEKLY;BYDAY=XX",
        "FREQ=WEEKLY;COUNT=-3",  # used to book one occurrence
        "FREQ=WEEKLY;COUNT=0",
        "FREQ=WEEKLY;INTERVAL=0",  # used to be a 500 (ZeroDivisionError)
        "FREQ=WEEKLY;INTERVAL=-1",  # used to be a 500 (ValueError)
        "FREQ=HOURLY;COUNT=5",
        "NOT A RULE AT ALL",
    ):
        series = {
            "service_id": tenant.service_id,
            "starts_local": "2026-12-07T10:00:00",
            "rrule": rrule,
        }
        assert_problem(client.post("/v1/series", json=series), 422, "invalid-input"), rrule
    # Nothing half-written: no resource with its first rule only, no hours, no series.
    resources = client.get("/v1/resources").json()
    assert {x["id"] for x in resources} == {*tenant.staff, *tenant.rooms}
    assert len(client.get(f"/v1/resources/{tenant.staff[0]}").json()["working_hours"]) == 1
    assert row_counts(infra.admin_url, tenant.id) == before


def test_naive_datetimes_where_an_instant_is_needed(client: httpx.Client, tenant: Tenant) -> None:
    naive = "2026-12-07T10:00:00"
    direct = {"service_id": tenant.service_id, "start": naive}
    assert_problem(client.post("/v1/bookings", json=direct), 400, "bad-request")
    assert_problem(client.post("/v1/holds", json=direct), 400, "bad-request")
    r = availability(client, tenant, **{"from": naive}, to="2026-12-08T00:00:00")
    assert_problem(r, 422, "invalid-input")
    r = client.post(
        f"/v1/resources/{tenant.staff[0]}/exceptions",
        json={"kind": "external", "start": naive, "end": "2026-12-07T11:00:00Z"},
    )
    assert_problem(r, 400, "bad-request")
    # The other way round: a series' local wall time must not carry an offset.
    series = {
        "service_id": tenant.service_id,
        "starts_local": "2026-12-07T10:00:00-05:00",
        "rrule": "FREQ=WEEKLY;COUNT=2",
    }
    r = client.post("/v1/series", json=series)
    assert assert_problem(r, 422, "invalid-input")["field"] == "starts_local"


def test_oversized_malformed_and_unknown_fields(
    infra: Infra, client: httpx.Client, tenant: Tenant
) -> None:
    before = row_counts(infra.admin_url, tenant.id)
    huge = staff_body(name="x" * (300 * 1024))
    assert_problem(client.post("/v1/resources", json=huge), 413, "body-too-large")
    r = client.post(
        "/v1/bookings",
        json={"service_id": tenant.service_id, "start": MONDAY_10_NY, "colour": "blue"},
    )
    body = assert_problem(r, 400, "bad-request")
    assert "colour" in body["detail"] + str(body.get("errors"))
    r = client.post(
        "/v1/bookings",
        content=b'{"service_id": "',
        headers={"content-type": "application/json"},
    )
    assert_problem(r, 400, "bad-request")
    r = client.post(
        "/v1/holds", json={"service_id": tenant.service_id, "start": MONDAY_10_NY, "ttl_seconds": 2}
    )
    assert assert_problem(r, 422, "invalid-input")["field"] == "ttl_seconds"
    r = client.post(
        "/v1/services",
        json={
            "name": "Bad rules",
            "duration_minutes": 30,
            "requirements": [{"kind": "room"}],
            "rules": {"cancel_cutoff_minutes": -5},
        },
    )
    assert_problem(r, 422, "invalid-input")
    assert row_counts(infra.admin_url, tenant.id) == before


def test_missing_invalid_and_revoked_keys(api: Api, tenant: Tenant) -> None:
    path = f"/v1/services/{tenant.service_id}"
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        assert_problem(client.get(path), 401, "unauthorized")
        # The key is checked first: a bad body or parameter from a stranger is still a 401.
        assert_problem(client.post("/v1/holds", json={"start": "soon"}), 401, "unauthorized")
        r = client.get(
            f"{path}/availability", params={"from": "x"}, headers={"X-Request-Id": "stranger-1"}
        )
        assert_problem(r, 401, "unauthorized")
        assert r.headers["x-request-id"] == "stranger-1"
        assert client.options(path).status_code == 204  # which methods, to anyone
        for header in ("Bearer", "Basic dXNlcjpwYXNz", "Bearer not-a-key", "Bearer sw_abc_def"):
            assert_problem(client.get(path, headers={"Authorization": header}), 401, "unauthorized")
        made = client.post(
            "/v1/api-keys", json={"name": "temp", "scopes": ["read"]}, headers=tenant.headers
        )
        assert made.status_code == 201, made.text
        temp = {"Authorization": f"Bearer {made.json()['token']}"}
        assert client.get(path, headers=temp).status_code == 200
        revoked = client.delete(f"/v1/api-keys/{made.json()['id']}", headers=tenant.headers)
        assert revoked.status_code == 204
        # Another worker may have the key cached for up to a second.
        deadline = time.monotonic() + 5
        while (r := client.get(path, headers=temp)).status_code == 200:
            assert time.monotonic() < deadline, "a revoked key kept working"
            time.sleep(0.2)
        assert_problem(r, 401, "unauthorized")


def test_a_key_without_the_scope_is_forbidden(
    api: Api, infra: Infra, client: httpx.Client, tenant: Tenant
) -> None:
    made = client.post("/v1/api-keys", json={"name": "reader", "scopes": ["read"]})
    assert made.status_code == 201, made.text
    assert made.json()["scopes"] == ["read"]
    reader = {"Authorization": f"Bearer {made.json()['token']}"}
    direct = {"service_id": tenant.service_id, "start": MONDAY_10_NY}
    before = row_counts(infra.admin_url, tenant.id)
    with httpx.Client(base_url=api.base_url, timeout=30, headers=reader) as as_reader:
        assert availability(as_reader, tenant).status_code == 200
        assert_problem(as_reader.post("/v1/bookings", json=direct), 403, "forbidden")
        assert_problem(as_reader.post("/v1/holds", json=direct), 403, "forbidden")
        assert_problem(as_reader.post("/v1/resources", json=staff_body()), 403, "forbidden")
        assert_problem(as_reader.post("/v1/api-keys", json={"scopes": ["manage"]}), 403)
    # The admin key is not a tenant key, and a tenant key cannot create tenants.
    r = client.get("/v1/bookings", params={"from": "2026-12-07T00:00:00Z", "to": MONDAY_10_NY})
    assert r.status_code == 200
    admin_list = client.get(
        "/v1/bookings",
        params={"from": "2026-12-07T00:00:00Z", "to": MONDAY_10_NY},
        headers=api.admin_headers(),
    )
    assert_problem(admin_list, 403, "forbidden")
    assert_problem(client.post("/v1/tenants", json={"name": "x", "zone": "UTC"}), 403, "forbidden")
    assert row_counts(infra.admin_url, tenant.id) == before


def test_a_method_the_path_does_not_take_is_refused_naming_those_it_does(
    client: httpx.Client,
) -> None:
    """RFC 9110: a 405 carries `Allow`, the methods the path does take."""
    refused = client.delete("/v1/holds")
    assert_problem(refused, 405, "method-not-allowed")
    assert "POST" in {m.strip() for m in refused.headers["allow"].split(",")}
