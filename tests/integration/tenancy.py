"""Builders for integration tests: a tenant with staff, rooms and a service, over the real API."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

WEEKDAYS = "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR"


@dataclass
class Tenant:
    id: str
    headers: dict[str, str] = field(repr=False)
    staff: list[str] = field(default_factory=list)
    rooms: list[str] = field(default_factory=list)
    service_id: str = ""


def make_tenant(
    client: httpx.Client,
    admin_headers: dict[str, str],
    *,
    zone: str = "America/New_York",
    staff: int = 1,
    rooms: int = 1,
    skills: tuple[str, ...] = ("colour",),
    daily_capacity: int | None = None,
    service: dict[str, Any] | None = None,
    rules: dict[str, Any] | None = None,
) -> Tenant:
    """A tenant whose staff work weekdays 09:00-17:00 and rooms every day 08:00-20:00 (local),
    with one service needing a skilled staff member and a room."""
    r = client.post(
        "/v1/tenants",
        json={"name": "Test salon", "zone": zone, "rules": rules or {}},
        headers=admin_headers,
    )
    r.raise_for_status()
    body = r.json()
    tenant = Tenant(body["tenant"]["id"], {"Authorization": f"Bearer {body['api_key']['token']}"})
    for i in range(staff):
        r = client.post(
            "/v1/resources",
            json={
                "kind": "staff",
                "name": f"Staff {i}",
                "zone": zone,
                "skills": list(skills),
                "daily_capacity": daily_capacity,
                "working_hours": [
                    {
                        "starts_local": "2026-01-05T09:00:00",
                        "duration_minutes": 480,
                        "rrule": WEEKDAYS,
                    }
                ],
            },
            headers=tenant.headers,
        )
        r.raise_for_status()
        tenant.staff.append(r.json()["id"])
    for i in range(rooms):
        r = client.post(
            "/v1/resources",
            json={
                "kind": "room",
                "name": f"Room {i}",
                "zone": zone,
                "working_hours": [
                    {
                        "starts_local": "2026-01-05T08:00:00",
                        "duration_minutes": 720,
                        "rrule": "FREQ=DAILY",
                    }
                ],
            },
            headers=tenant.headers,
        )
        r.raise_for_status()
        tenant.rooms.append(r.json()["id"])
    requirements = [{"kind": "staff", "skills": list(skills)}]
    if rooms:
        requirements.append({"kind": "room"})
    r = client.post(
        "/v1/services",
        json=service
        or {
            "name": "Colour",
            "duration_minutes": 60,
            "step_minutes": 30,
            "requirements": requirements,
        },
        headers=tenant.headers,
    )
    r.raise_for_status()
    tenant.service_id = r.json()["id"]
    return tenant
