"""What the front desk reads back: remaining daily capacity per staff member and local day, the
activity feed (who did what, when, in which request; paged; per tenant), and the audit trail,
which records reads too."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg

from service import repository as repo
from service.db import Database
from tests.integration.conftest import Api, Infra
from tests.integration.invariants import assert_problem, fetched_rows
from tests.integration.tenancy import WEEKDAYS, Tenant, make_tenant

NY = "America/New_York"
AUCKLAND = "Pacific/Auckland"
READ = (".read", ".list", ".explain", ".plan")


def monday_ahead(weeks: int = 4) -> date:
    day = datetime.now(UTC).date() + timedelta(weeks=weeks)
    return day + timedelta(days=-day.weekday() % 7)


MONDAY = monday_ahead()
SUNDAY, TUESDAY = MONDAY - timedelta(days=1), MONDAY + timedelta(days=1)


def at(day: date, hour: int, zone: str = NY) -> str:
    local = datetime.combine(day, time(hour), tzinfo=ZoneInfo(zone))
    return local.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- daily capacity -------------------------------------------------------------------------------
def capacity(client: httpx.Client, tenant: Tenant, **params: Any) -> dict[tuple[str, str], Any]:
    r = client.get(
        "/v1/capacity",
        params={"from": SUNDAY.isoformat(), "to": TUESDAY.isoformat(), **params},
        headers=tenant.headers,
    )
    assert r.status_code == 200, r.text
    return {(row["resource_id"], row["date"]): row for row in r.json()}


def test_capacity_shows_what_is_left_per_staff_member_and_local_day(api: Api) -> None:
    """An Auckland staff member (capacity 3 appointments, 150 minutes a day) in a New York
    tenant: Monday 09:00 and 15:00 in Auckland fall on two UTC dates (Sunday and Monday) but
    one Auckland day, which is the day they are counted on. A cancellation gives one back."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers(), rooms=0, daily_capacity=2)
        (local_staff,) = tenant.staff
        r = client.post(
            "/v1/resources",
            json={
                "kind": "staff",
                "name": "Kiri",
                "zone": AUCKLAND,
                "skills": ["colour"],
                "daily_capacity": 3,
                "daily_minutes": 150,
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
        assert r.status_code == 201, r.text
        kiri = r.json()["id"]
        morning, afternoon = at(MONDAY, 9, AUCKLAND), at(MONDAY, 15, AUCKLAND)
        assert morning[:10] != afternoon[:10]  # two UTC dates, one Auckland day

        def book(start: str, rid: str) -> str:
            body = {"service_id": tenant.service_id, "start": start, "resource_ids": [rid]}
            r = client.post("/v1/bookings", json=body, headers=tenant.headers)
            assert r.status_code == 201, r.text
            booking_id: str = r.json()["id"]
            return booking_id

        before = capacity(client, tenant)
        book(morning, kiri)
        later = book(afternoon, kiri)
        book(at(MONDAY, 10), local_staff)
        rows = capacity(client, tenant)

        # Every staff member (and only staff: make_tenant made no rooms) for each day.
        assert set(rows) == {
            (rid, d.isoformat()) for rid in (kiri, local_staff) for d in (SUNDAY, MONDAY, TUESDAY)
        }
        assert set(before) == set(rows)
        for day in (SUNDAY, TUESDAY):
            assert rows[kiri, day.isoformat()] == before[kiri, day.isoformat()]
            assert rows[kiri, day.isoformat()]["remaining_appointments"] == 3
            assert rows[kiri, day.isoformat()]["remaining_minutes"] == 150
        monday = rows[kiri, MONDAY.isoformat()]
        assert monday == {
            "resource_id": kiri,
            "date": MONDAY.isoformat(),
            "zone": AUCKLAND,
            "appointments": 2,
            "minutes": 120,
            "daily_capacity": 3,
            "daily_minutes": 150,
            "remaining_appointments": 1,
            "remaining_minutes": 30,
        }
        ny = rows[local_staff, MONDAY.isoformat()]
        assert (ny["zone"], ny["appointments"], ny["remaining_appointments"]) == (NY, 1, 1)
        assert ny["daily_minutes"] is None and ny["remaining_minutes"] is None
        assert rows[local_staff, SUNDAY.isoformat()]["remaining_appointments"] == 2

        # One resource only, on request; a cancellation frees its share of the day.
        assert set(capacity(client, tenant, resource_id=kiri)) == {
            (kiri, d.isoformat()) for d in (SUNDAY, MONDAY, TUESDAY)
        }
        client.post(f"/v1/bookings/{later}/cancel", headers=tenant.headers).raise_for_status()
        monday = capacity(client, tenant, resource_id=kiri)[kiri, MONDAY.isoformat()]
        assert (monday["appointments"], monday["minutes"]) == (1, 60)
        assert (monday["remaining_appointments"], monday["remaining_minutes"]) == (2, 90)

        # Bad ranges and unknown resources are problems, not empty answers.
        def get(**params: Any) -> httpx.Response:
            return client.get("/v1/capacity", params=params, headers=tenant.headers)

        assert_problem(
            get(**{"from": MONDAY.isoformat(), "to": SUNDAY.isoformat()}), 422, "invalid-input"
        )
        far = (MONDAY + timedelta(days=90)).isoformat()
        assert_problem(get(**{"from": MONDAY.isoformat(), "to": far}), 422, "invalid-input")
        assert_problem(get(**{"from": MONDAY.isoformat()}), 400)
        assert_problem(get(**{"from": "monday", "to": "tuesday"}), 400)
        unknown = "00000000-0000-4000-8000-000000000000"
        r = get(**{"from": MONDAY.isoformat(), "to": MONDAY.isoformat(), "resource_id": unknown})
        assert_problem(r, 404, "not-found")


# --- activity and audit ---------------------------------------------------------------------------
def feed(
    client: httpx.Client, tenant: Tenant, path: str = "/v1/activity", **params: Any
) -> list[dict[str, Any]]:
    r = client.get(path, params={"limit": 1000, **params}, headers=tenant.headers)
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


def key_id(client: httpx.Client, tenant: Tenant) -> str:
    (key,) = client.get("/v1/api-keys", headers=tenant.headers).json()
    kid: str = key["id"]
    return kid


def tenants_of(admin_url: str, event_ids: list[int]) -> set[str]:
    with psycopg.connect(admin_url) as conn:
        rows = conn.execute(
            "SELECT DISTINCT tenant_id::text FROM audit_events WHERE id = ANY(%s)", (event_ids,)
        ).fetchall()
    return {r[0] for r in rows}


def test_activity_feed_records_who_did_what_in_which_request(api: Api, infra: Infra) -> None:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        a = make_tenant(client, api.admin_headers())
        b = make_tenant(client, api.admin_headers())
        actor = key_id(client, a)
        sent: list[tuple[str, str, str, str]] = []  # (request id, action, entity, entity id)

        def write(
            path: str, action: str, entity: str, body: Any = None, entity_id: str = ""
        ) -> dict[str, Any]:
            rid = f"req-{len(sent)}-{action}"
            r = client.post(path, json=body, headers={**a.headers, "X-Request-Id": rid})
            assert r.status_code in (200, 201), r.text
            assert r.headers["x-request-id"] == rid
            out: dict[str, Any] = r.json()
            sent.append((rid, action, entity, entity_id or out["id"]))
            return out

        staff = a.staff[0]
        write(
            f"/v1/resources/{staff}/exceptions",
            "resource.exception.add",
            "resource",
            {"kind": "time_off", "start": at(TUESDAY, 9), "end": at(TUESDAY, 12)},
            entity_id=staff,
        )
        booking = write(
            "/v1/bookings",
            "booking.create",
            "booking",
            {"service_id": a.service_id, "start": at(MONDAY, 10)},
        )
        entry = write(
            "/v1/queue",
            "queue.enqueue",
            "queue_entry",
            {
                "service_id": a.service_id,
                "earliest": at(MONDAY, 9),
                "latest": at(MONDAY, 15),
                "priority": 2,
            },
        )
        assigned = write(
            f"/v1/queue/{entry['id']}/assign",
            "queue.assign",
            "queue_entry",
            {"start": at(MONDAY, 13)},
            entity_id=entry["id"],
        )
        write(
            f"/v1/bookings/{booking['id']}/cancel",
            "booking.cancel",
            "booking",
            entity_id=booking["id"],
        )
        # Reads are audited but are not activity.
        assert client.get(f"/v1/bookings/{booking['id']}", headers=a.headers).status_code == 200
        assert client.get("/v1/queue", headers=a.headers).status_code == 200

        events = feed(client, a)
        ids = [e["id"] for e in events]
        assert ids == sorted(set(ids))
        ats = [datetime.fromisoformat(e["at"]) for e in events]
        assert ats == sorted(ats)
        assert not [e for e in events if e["action"].endswith(READ)]

        # The catalog built by make_tenant: the tenant (by the operator), staff, room, service.
        assert [(e["action"], e["entity"], e["entity_id"], e["actor"]) for e in events[:4]] == [
            ("tenant.create", "tenant", a.id, "admin"),
            ("resource.create", "resource", staff, actor),
            ("resource.create", "resource", a.rooms[0], actor),
            ("service.create", "service", a.service_id, actor),
        ]
        assert len(events) == 4 + len(sent)
        by_request = {e["request_id"]: e for e in events}
        for rid, action, entity, entity_id in sent:
            event = by_request[rid]
            assert (event["action"], event["entity"], event["entity_id"]) == (
                action,
                entity,
                entity_id,
            )
            assert event["actor"] == actor
        assert by_request[sent[3][0]]["detail"] == {"booking": assigned["booking_id"]}
        assert [e["action"] for e in events[-len(sent) :]] == [s[1] for s in sent]

        # Paged by the cursor: every event exactly once, in order.
        paged: list[dict[str, Any]] = []
        after = "0.0"
        while True:
            r = client.get("/v1/activity", params={"after": after, "limit": 3}, headers=a.headers)
            page = r.json()
            assert len(page["events"]) <= 3
            if not page["events"]:
                assert page["next_after"] == after
                break
            paged += page["events"]
            after = page["next_after"]
        assert paged == events
        assert [e["action"] for e in feed(client, a, entity="queue_entry")] == [
            "queue.enqueue",
            "queue.assign",
        ]

        # Tenant B sees none of A's events, A none of B's.
        theirs = feed(client, b)
        assert theirs and tenants_of(infra.admin_url, [e["id"] for e in theirs]) == {b.id}
        assert tenants_of(infra.admin_url, ids) == {a.id}
        mine = {booking["id"], entry["id"], staff, a.service_id, a.id}
        assert not mine & {e["entity_id"] for e in theirs}
        assert not {rid for rid, *_ in sent} & {e["request_id"] for e in theirs}
        assert not {e["id"] for e in theirs} & set(ids)


def test_a_read_appends_an_audit_event_with_the_responses_request_id(
    api: Api, infra: Infra
) -> None:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers())
        r = client.post(
            "/v1/bookings",
            json={"service_id": tenant.service_id, "start": at(MONDAY, 10)},
            headers=tenant.headers,
        )
        assert r.status_code == 201, r.text
        booking_id = r.json()["id"]

        # No request id sent: the service makes one and answers with it.
        read = client.get(f"/v1/bookings/{booking_id}", headers=tenant.headers)
        assert read.status_code == 200
        generated = read.headers["x-request-id"]
        assert generated
        # One sent: it is echoed and recorded as is.
        queue_read = client.get(
            "/v1/queue", headers={**tenant.headers, "X-Request-Id": "front-desk-42"}
        )
        assert queue_read.headers["x-request-id"] == "front-desk-42"

        trail = feed(client, tenant, "/v1/audit")

    reads = [e for e in trail if e["request_id"] == generated]
    assert [(e["action"], e["entity"], e["entity_id"]) for e in reads] == [
        ("booking.read", "booking", booking_id)
    ]
    assert [e["action"] for e in trail if e["request_id"] == "front-desk-42"] == ["queue.list"]
    with psycopg.connect(infra.admin_url) as conn:
        row = conn.execute(
            "SELECT tenant_id::text, action, entity_id FROM audit_events WHERE request_id = %s",
            (generated,),
        ).fetchall()
    assert row == [(tenant.id, "booking.read", booking_id)]


def page_all(client: httpx.Client, tenant: Tenant, after: str) -> tuple[list[str], str]:
    """Request ids of the activity after ``after``, paging to the end; and the cursor. (Not
    the full trail: each page read is itself audited, so that one never ends.)"""
    seen: list[str] = []
    while True:
        r = client.get("/v1/activity", params={"after": after, "limit": 2}, headers=tenant.headers)
        assert r.status_code == 200, r.text
        page = r.json()
        if not page["events"]:
            return seen, after
        seen += [e["request_id"] for e in page["events"]]
        after = page["next_after"]


def test_paging_the_feed_never_skips_an_event_committed_out_of_order(
    api: Api, infra: Infra
) -> None:
    """An event whose transaction drew the smaller id but commits last still reaches a client
    that paged along meanwhile: the feed holds back what younger transactions wrote until the
    older ones have ended, instead of moving the client's cursor past the late event."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers(), staff=0, rooms=0)
        _, after = page_all(client, tenant, "0.0")
        insert = (
            "INSERT INTO audit_events (tenant_id, actor, action, entity, request_id)"
            " VALUES (%s, 'test', 'test.write', 'test', %s) RETURNING id"
        )
        with psycopg.connect(infra.admin_url) as slow, psycopg.connect(infra.admin_url) as quick:
            (late_id,) = slow.execute(insert, (tenant.id, "late")).fetchone() or (0,)
            (early_id,) = quick.execute(insert, (tenant.id, "early")).fetchone() or (0,)
            quick.commit()
            assert late_id < early_id  # the smaller id, still uncommitted
            seen_while_open, after = page_all(client, tenant, after)
            slow.commit()
        seen_after, _ = page_all(client, tenant, after)
    assert "late" not in seen_while_open
    assert "early" not in seen_while_open  # held back behind the open transaction
    assert [r for r in seen_while_open + seen_after if r in ("late", "early")] == ["late", "early"]


def test_the_feed_orders_transactions_by_number_not_by_their_digits(api: Api, infra: Infra) -> None:
    """Transaction ids 99 and 100, one event a page: 99 comes first, and neither is lost or
    shown twice (ordered as text, "100" would come before "99")."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers(), staff=0, rooms=0)
        with psycopg.connect(infra.admin_url) as conn:
            for xact, rid in (("100", "x100"), ("99", "x99")):
                conn.execute(
                    "INSERT INTO audit_events (tenant_id, actor, action, entity, request_id, xact)"
                    " VALUES (%s, 'test', 'test.write', 'test', %s, %s::xid8)",
                    (tenant.id, rid, xact),
                )
        seen, _ = page_all(client, tenant, "0.0")
    assert [r for r in seen if r in ("x99", "x100")] == ["x99", "x100"]


def test_a_malformed_feed_cursor_is_refused(api: Api) -> None:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers(), staff=0, rooms=0)
        for cursor in ("12", "1.2.3", "-1.0"):  # not the cursor's shape
            r = client.get("/v1/audit", params={"after": cursor}, headers=tenant.headers)
            assert_problem(r, 400)
        for cursor in (f"{2**64}.0", f"0.{2**63}"):  # beyond a transaction id, an event id
            r = client.get("/v1/audit", params={"after": cursor}, headers=tenant.headers)
            assert assert_problem(r, 422, "invalid-input")["field"] == "after"


def test_the_retired_cursor_is_refused_not_ignored(api: Api) -> None:
    """Ignored, `after_id` would hand a client that pages by it the first page forever."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers(), staff=0, rooms=0)
        for feed in ("/v1/audit", "/v1/activity"):
            r = client.get(feed, params={"after_id": "5"}, headers=tenant.headers)
            problem = assert_problem(r, 422, "invalid-input")
            assert problem["field"] == "after_id"
            assert "next_after" in problem["detail"]


def test_a_poll_of_the_activity_feed_does_not_walk_the_reads(api: Api, infra: Infra) -> None:
    """3,000 reads since the last change: polling the activity feed from that change fetches
    none of them (it used to walk them all, on every poll), and the audit trail has them all."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers(), staff=0, rooms=0)
        _, after = page_all(client, tenant, "0.0")
    with psycopg.connect(infra.admin_url) as conn:
        conn.execute(
            "INSERT INTO audit_events (tenant_id, actor, action, entity)"
            " SELECT %s, 'test', 'availability.read', 'service' FROM generate_series(1, 3000)",
            (tenant.id,),
        )
    xact, event_id = (int(part) for part in after.split("."))

    async def poll(writes_only: bool) -> tuple[int, int]:
        db = await Database.open(infra.app_url, 1, 1)
        try:
            async with db.transaction(tenant.id) as conn:
                events = await repo.audit_feed(conn, (xact, event_id), 5000, writes_only)
                return len(events), (await fetched_rows(conn))["audit_events"]
        finally:
            await db.close()

    activity, fetched = asyncio.run(poll(writes_only=True))
    assert (activity, fetched) == (0, 0)
    trail, _ = asyncio.run(poll(writes_only=False))
    assert trail >= 3000
