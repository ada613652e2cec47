"""The booking flows end to end: cancel, cut-offs, atomic reschedule, recurring series across
DST, and holds (hide, conflict, release, expire), each checked in the database as well."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from tests.integration.conftest import Api, Infra
from tests.integration.invariants import active_bookings, assert_problem, overlaps, row_counts
from tests.integration.tenancy import Tenant, make_tenant

NY = ZoneInfo("America/New_York")
MONDAY_10_NY = "2026-12-07T15:00:00Z"
MONDAY_11_NY = "2026-12-07T16:00:00Z"
DAY = {"from": "2026-12-07T00:00:00Z", "to": "2026-12-08T00:00:00Z"}
YEAR_OF_MINUTES = 60 * 24 * 365


def book(client: httpx.Client, tenant: Tenant, start: str, **extra: Any) -> httpx.Response:
    body = {"service_id": tenant.service_id, "start": start, **extra}
    return client.post("/v1/bookings", json=body, headers=tenant.headers)


def starts_offered(client: httpx.Client, tenant: Tenant, headers: dict[str, str]) -> set[str]:
    r = client.get(f"/v1/services/{tenant.service_id}/availability", params=DAY, headers=headers)
    assert r.status_code == 200, r.text
    return {s["start"] for s in r.json()["slots"]}


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def colour_service(**rules: int) -> dict[str, Any]:
    return {
        "name": "Colour",
        "duration_minutes": 60,
        "step_minutes": 30,
        "requirements": [{"kind": "staff", "skills": ["colour"]}, {"kind": "room"}],
        "rules": rules,
    }


# --- cancel ---------------------------------------------------------------------------------
def test_cancel_frees_the_slot(api: Api, infra: Infra) -> None:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers())
        first = book(client, tenant, MONDAY_10_NY, customer="Ada")
        assert first.status_code == 201, first.text
        assert MONDAY_10_NY not in starts_offered(client, tenant, tenant.headers)
        assert_problem(book(client, tenant, MONDAY_10_NY), 409, "slot-conflict")

        cancel = client.post(f"/v1/bookings/{first.json()['id']}/cancel", headers=tenant.headers)
        assert cancel.status_code == 200, cancel.text
        assert cancel.json()["status"] == "cancelled"
        assert cancel.json()["cancelled_at"] is not None
        twice = client.post(f"/v1/bookings/{first.json()['id']}/cancel", headers=tenant.headers)
        assert twice.status_code == 200 and twice.json() == cancel.json()

        assert MONDAY_10_NY in starts_offered(client, tenant, tenant.headers)
        second = book(client, tenant, MONDAY_10_NY, customer="Grace")
        assert second.status_code == 201, second.text
    assert active_bookings(infra.admin_url, tenant.id) == {second.json()["id"]}
    assert row_counts(infra.admin_url, tenant.id)["bookings"] == 2
    assert overlaps(infra.admin_url) == []


def test_cancel_and_reschedule_cutoffs(api: Api, infra: Infra) -> None:
    """With a year-long cut-off, a booking next month is already too late to change."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(
            client,
            api.admin_headers(),
            service=colour_service(
                cancel_cutoff_minutes=YEAR_OF_MINUTES, reschedule_cutoff_minutes=YEAR_OF_MINUTES
            ),
        )
        booked = book(client, tenant, MONDAY_10_NY)
        assert booked.status_code == 201, booked.text
        booking_id = booked.json()["id"]
        r = client.post(f"/v1/bookings/{booking_id}/cancel", headers=tenant.headers)
        assert assert_problem(r, 422, "rule-violation")["why"]["reason"] == "cancel_cutoff"
        r = client.post(
            f"/v1/bookings/{booking_id}/reschedule",
            json={"start": MONDAY_11_NY},
            headers=tenant.headers,
        )
        assert assert_problem(r, 422, "rule-violation")["why"]["reason"] == "reschedule_cutoff"
        again = client.get(f"/v1/bookings/{booking_id}", headers=tenant.headers)
        assert again.json()["status"] == "confirmed"
    assert active_bookings(infra.admin_url, tenant.id) == {booking_id}
    assert row_counts(infra.admin_url, tenant.id)["bookings"] == 1


# --- reschedule -------------------------------------------------------------------------------
def test_reschedule_is_atomic(api: Api, infra: Infra) -> None:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers())
        x = book(client, tenant, MONDAY_10_NY, customer="X").json()
        y = book(client, tenant, MONDAY_11_NY, customer="Y").json()

        # Onto a taken slot: refused, and the original stays confirmed and active.
        r = client.post(
            f"/v1/bookings/{x['id']}/reschedule",
            json={"start": MONDAY_11_NY},
            headers=tenant.headers,
        )
        assert_problem(r, 409, "slot-conflict")
        assert client.get(f"/v1/bookings/{x['id']}", headers=tenant.headers).json() == x
        assert active_bookings(infra.admin_url, tenant.id) == {x["id"], y["id"]}

        # Onto a free slot: a new confirmed booking, the old one cancelled, in one step.
        r = client.post(
            f"/v1/bookings/{x['id']}/reschedule",
            json={"start": "2026-12-07T18:00:00Z"},
            headers=tenant.headers,
        )
        assert r.status_code == 201, r.text
        moved = r.json()
        assert moved["id"] != x["id"]
        assert moved["status"] == "confirmed"
        assert moved["rescheduled_from"] == x["id"]
        assert moved["start"] == "2026-12-07T18:00:00Z"
        assert moved["customer"] == "X"
        old = client.get(f"/v1/bookings/{x['id']}", headers=tenant.headers).json()
        assert old["status"] == "cancelled"
        assert MONDAY_10_NY in starts_offered(client, tenant, tenant.headers)

        # Onto a slot overlapping only its own old time: the booking does not collide with
        # itself (13:00 -> 13:30).
        r = client.post(
            f"/v1/bookings/{moved['id']}/reschedule",
            json={"start": "2026-12-07T18:30:00Z"},
            headers=tenant.headers,
        )
        assert r.status_code == 201, r.text
        final = r.json()
        # A cancelled booking cannot be moved again.
        r = client.post(
            f"/v1/bookings/{x['id']}/reschedule",
            json={"start": "2026-12-07T20:00:00Z"},
            headers=tenant.headers,
        )
        assert_problem(r, 422, "rule-violation")
    assert active_bookings(infra.admin_url, tenant.id) == {y["id"], final["id"]}
    assert row_counts(infra.admin_url, tenant.id)["bookings"] == 4
    assert overlaps(infra.admin_url) == []


# --- recurring series -------------------------------------------------------------------------
def series(
    client: httpx.Client, tenant: Tenant, starts_local: str, rrule: str, **extra: Any
) -> httpx.Response:
    body = {"service_id": tenant.service_id, "starts_local": starts_local, "rrule": rrule, **extra}
    return client.post("/v1/series", json=body, headers=tenant.headers)


def test_weekly_series_keeps_its_local_time_across_dst(api: Api, infra: Infra) -> None:
    """New York springs forward on 2027-03-14 and falls back on 2027-11-07: a weekly 10:00
    stays 10:00 local, so its UTC time moves by an hour. Phoenix has no DST: its 10:00 is
    17:00 UTC all year (12:00 then 13:00 for the New York staff)."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers())
        spring = series(client, tenant, "2027-03-01T10:00:00", "FREQ=WEEKLY;COUNT=4")
        fall = series(
            client, tenant, "2027-10-25T10:00:00", "FREQ=WEEKLY;COUNT=3", horizon_days=400
        )
        phoenix = series(
            client,
            tenant,
            "2027-03-02T10:00:00",
            "FREQ=WEEKLY;BYDAY=TU;COUNT=3",
            zone="America/Phoenix",
        )
        for r in (spring, fall, phoenix):
            assert r.status_code == 201, r.text
        stored = client.get(f"/v1/series/{spring.json()['id']}", headers=tenant.headers).json()

    def starts(r: httpx.Response) -> list[str]:
        return [b["start"] for b in r.json()["bookings"]]

    assert starts(spring) == [
        "2027-03-01T15:00:00Z",
        "2027-03-08T15:00:00Z",
        "2027-03-15T14:00:00Z",
        "2027-03-22T14:00:00Z",
    ]
    assert starts(fall) == ["2027-10-25T14:00:00Z", "2027-11-01T14:00:00Z", "2027-11-08T15:00:00Z"]
    assert starts(phoenix) == [
        "2027-03-02T17:00:00Z",
        "2027-03-09T17:00:00Z",
        "2027-03-16T17:00:00Z",
    ]
    for r in (spring, fall):
        local = {utc(s).astimezone(NY).strftime("%a %H:%M") for s in starts(r)}
        assert local == {"Mon 10:00"}
    assert stored["zone"] == "America/New_York"
    assert [b["start"] for b in stored["bookings"]] == starts(spring)
    assert [b["recurrence_id"] for b in stored["bookings"]] == [
        "2027-03-01T10:00:00",
        "2027-03-08T10:00:00",
        "2027-03-15T10:00:00",
        "2027-03-22T10:00:00",
    ]
    assert len(active_bookings(infra.admin_url, tenant.id)) == 10
    assert overlaps(infra.admin_url) == []


def test_a_series_checks_every_occurrence_and_writes_all_or_nothing(api: Api, infra: Infra) -> None:
    fifth, seventh = "2027-02-01T15:00:00Z", "2027-02-15T15:00:00Z"
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers())
        taken = book(client, tenant, fifth)
        assert taken.status_code == 201, taken.text
        before = row_counts(infra.admin_url, tenant.id)

        # Weekly from Monday 2027-01-04: only the 5th occurrence collides.
        r = series(client, tenant, "2027-01-04T10:00:00", "FREQ=WEEKLY;COUNT=8")
        why = assert_problem(r, 409, "slot-conflict")["why"]
        assert why["reason"] == "occurrences_unavailable"
        assert [o["start"] for o in why["occurrences"]] == [fifth]
        assert row_counts(infra.admin_url, tenant.id) == before

        # Time off on the 7th as well: every failing occurrence is listed, not just the first.
        off = client.post(
            f"/v1/resources/{tenant.staff[0]}/exceptions",
            json={
                "kind": "time_off",
                "start": "2027-02-15T05:00:00Z",
                "end": "2027-02-16T05:00:00Z",
            },
            headers=tenant.headers,
        )
        assert off.status_code == 201, off.text
        r = series(client, tenant, "2027-01-04T10:00:00", "FREQ=WEEKLY;COUNT=8")
        why = assert_problem(r, 409, "slot-conflict")["why"]
        assert [o["start"] for o in why["occurrences"]] == [fifth, seventh]
        assert row_counts(infra.admin_url, tenant.id) == before

        # The same rule, stopped before the collisions, books every occurrence at once.
        r = series(client, tenant, "2027-01-04T10:00:00", "FREQ=WEEKLY;COUNT=4")
        assert r.status_code == 201, r.text
        assert [b["start"] for b in r.json()["bookings"]] == [
            f"2027-01-{d}T15:00:00Z" for d in ("04", "11", "18", "25")
        ]
    assert len(active_bookings(infra.admin_url, tenant.id)) == 5
    assert overlaps(infra.admin_url) == []


# --- holds ------------------------------------------------------------------------------------
def second_key(client: httpx.Client, tenant: Tenant) -> dict[str, str]:
    """Another caller of the same tenant (holds belong to the key that took them)."""
    r = client.post(
        "/v1/api-keys",
        json={"name": "front desk", "scopes": ["read", "book"]},
        headers=tenant.headers,
    )
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def test_a_live_hold_hides_its_slot_until_released(api: Api, infra: Infra) -> None:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers())
        other = second_key(client, tenant)
        slot = {"service_id": tenant.service_id, "start": MONDAY_10_NY}
        hold = client.post("/v1/holds", json=slot, headers=tenant.headers)
        assert hold.status_code == 201, hold.text
        assert hold.json()["degraded"] is False
        assert {r["resource_id"] for r in hold.json()["resources"]} == {
            tenant.staff[0],
            tenant.rooms[0],
        }

        # Others see the held hour (and the half-hours overlapping it) as taken ...
        offered = starts_offered(client, tenant, other)
        assert not offered & {"2026-12-07T14:30:00Z", MONDAY_10_NY, "2026-12-07T15:30:00Z"}
        assert {"2026-12-07T14:00:00Z", MONDAY_11_NY} <= offered
        # ... and cannot hold it, or any overlapping start.
        assert_problem(client.post("/v1/holds", json=slot, headers=other), 409, "slot-conflict")
        overlapping = {**slot, "start": "2026-12-07T15:30:00Z"}
        assert_problem(client.post("/v1/holds", json=overlapping, headers=other), 409)
        # Only the holder may release it.
        r = client.delete(f"/v1/holds/{hold.json()['id']}", headers=other)
        assert 400 <= r.status_code < 500
        extended = client.post(
            f"/v1/holds/{hold.json()['id']}/extend",
            json={"ttl_seconds": 600},
            headers=tenant.headers,
        )
        assert extended.status_code == 200, extended.text
        assert utc(extended.json()["expires_at"]) > utc(hold.json()["expires_at"])

        released = client.delete(f"/v1/holds/{hold.json()['id']}", headers=tenant.headers)
        assert released.status_code == 204
        trail = client.get("/v1/audit", params={"limit": 1000}, headers=tenant.headers).json()
        hold_actions = [e["action"] for e in trail["events"] if e["action"].startswith("hold.")]
        assert hold_actions[-3:] == ["hold.create", "hold.extend", "hold.release"]
        assert MONDAY_10_NY in starts_offered(client, tenant, other)
        mine = client.post("/v1/holds", json=slot, headers=other)
        assert mine.status_code == 201, mine.text
        confirmed = client.post("/v1/bookings", json={"hold_id": mine.json()["id"]}, headers=other)
        assert confirmed.status_code == 201, confirmed.text
        # The released hold's token confirms nothing: the slot is booked now.
        late = client.post(
            "/v1/bookings", json={"hold_id": hold.json()["id"]}, headers=tenant.headers
        )
        assert_problem(late, 409, "slot-conflict")
    assert active_bookings(infra.admin_url, tenant.id) == {confirmed.json()["id"]}


def test_an_expired_hold_cannot_be_confirmed(api: Api, infra: Infra) -> None:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers())
        other = second_key(client, tenant)
        slot = {"service_id": tenant.service_id, "start": MONDAY_10_NY, "ttl_seconds": 5}
        hold = client.post("/v1/holds", json=slot, headers=tenant.headers)
        assert hold.status_code == 201, hold.text
        assert MONDAY_10_NY not in starts_offered(client, tenant, other)

        expires = utc(hold.json()["expires_at"])
        time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.3)

        r = client.post("/v1/bookings", json={"hold_id": hold.json()["id"]}, headers=tenant.headers)
        assert_problem(r, 410, "hold-expired")
        r = client.post(
            f"/v1/holds/{hold.json()['id']}/extend",
            json={"ttl_seconds": 60},
            headers=tenant.headers,
        )
        assert_problem(r, 410, "hold-expired")
        assert MONDAY_10_NY in starts_offered(client, tenant, other)
    assert row_counts(infra.admin_url, tenant.id)["bookings"] == 0
