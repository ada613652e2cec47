import re

import httpx

from tests.integration.conftest import Api
from tests.integration.tenancy import make_tenant

MONDAY_10_NY = "2026-12-07T15:00:00Z"


def test_hold_confirm_and_replay(api: Api) -> None:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers())
        hold = client.post(
            "/v1/holds",
            json={"service_id": tenant.service_id, "start": MONDAY_10_NY},
            headers=tenant.headers,
        )
        assert hold.status_code == 201, hold.text
        headers = {**tenant.headers, "Idempotency-Key": "confirm-1"}
        first = client.post("/v1/bookings", json={"hold_id": hold.json()["id"]}, headers=headers)
        again = client.post("/v1/bookings", json={"hold_id": hold.json()["id"]}, headers=headers)
        assert first.status_code == again.status_code == 201
        assert first.json()["id"] == again.json()["id"]
        # Ids the service gives requests that sent none: 128 bits in hex, one per request.
        ids = [first.headers["x-request-id"], again.headers["x-request-id"]]
        assert all(re.fullmatch("[0-9a-f]{32}", rid) for rid in ids) and ids[0] != ids[1]
        listed = client.get(
            "/v1/bookings",
            params={"from": "2026-12-07T00:00:00Z", "to": "2026-12-08T00:00:00Z"},
            headers=tenant.headers,
        )
        assert [b["id"] for b in listed.json()] == [first.json()["id"]]
