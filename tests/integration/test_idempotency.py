"""Every POST honours Idempotency-Key: a retry returns the first result, never a duplicate."""

from __future__ import annotations

import httpx
import psycopg

from tests.integration.conftest import Api, Infra
from tests.integration.invariants import assert_problem
from tests.integration.tenancy import make_tenant

MONDAY_10_NY = "2026-12-07T15:00:00Z"


def test_a_retried_hold_is_the_same_hold_not_a_collision(api: Api) -> None:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers())
        body = {"service_id": tenant.service_id, "start": MONDAY_10_NY}
        keyed = {**tenant.headers, "Idempotency-Key": "hold-1"}
        first = client.post("/v1/holds", json=body, headers=keyed)
        retry = client.post("/v1/holds", json=body, headers=keyed)
        assert first.status_code == retry.status_code == 201, retry.text
        assert first.json()["resources"] == retry.json()["resources"]
        # Anyone else, or the same caller with another key, still meets the live hold.
        other = client.post(
            "/v1/holds", json=body, headers={**tenant.headers, "Idempotency-Key": "hold-2"}
        )
        assert_problem(other, 409, "slot-conflict")
        # Either answer's id confirms the one hold; the slot is booked once.
        booked = client.post(
            "/v1/bookings", json={"hold_id": retry.json()["id"]}, headers=tenant.headers
        )
        assert booked.status_code == 201, booked.text
        again = client.post(
            "/v1/bookings", json={"hold_id": first.json()["id"]}, headers=tenant.headers
        )
        assert_problem(again, 409, "slot-conflict")


def test_a_retried_tenant_creation_returns_the_first_tenant(api: Api, infra: Infra) -> None:
    body = {"name": "Idempotent salon", "zone": "Europe/London"}
    headers = {**api.admin_headers(), "Idempotency-Key": "tenant-create-1"}
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        first = client.post("/v1/tenants", json=body, headers=headers)
        retry = client.post("/v1/tenants", json=body, headers=headers)
        assert first.status_code == retry.status_code == 201, retry.text
        assert first.json()["tenant"]["id"] == retry.json()["tenant"]["id"]
        assert first.json()["api_key"]["id"] == retry.json()["api_key"]["id"]
        assert first.json()["api_key"]["token"].startswith("sw_")
        assert retry.json()["api_key"]["token"] is None  # a secret is shown once
        changed = client.post("/v1/tenants", json={**body, "name": "Other"}, headers=headers)
        assert_problem(changed, 422, "idempotency-key-reused")
    with psycopg.connect(infra.admin_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM tenants WHERE name = 'Idempotent salon'"
        ).fetchone()
    assert row is not None and row[0] == 1
