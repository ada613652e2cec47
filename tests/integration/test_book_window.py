"""Confirming a hold outside any transaction (`book_window`, migration 0010).

The service takes the hold's window as its check read it (remembered by the worker) or reads
it without locks, asks the engine, and books in one statement that takes the locks and
re-reads the window: it books only if the window reads as the service saw it, else writes
nothing and the window is read again, or a transaction decides. Run in-process on the real
servers, so that the catalog is cached (the fast path is taken only then). The window is
changed between the hold and its confirmation, or while a test session holds the resource's
advisory lock, which the booking statement waits for.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from service import repository as repo
from service.auth import Caller
from service.booking import BookingService, iso
from service.db import Idempotency
from service.errors import CapacityExceeded, IdempotencyMismatch
from tests.integration.conftest import Api, Infra
from tests.integration.invariants import lock_key, overlaps, row_counts
from tests.integration.tenancy import make_tenant
from tests.integration.test_capacity import NEW_YORK, booked_on
from tests.integration.test_concurrency import take_directly
from tests.integration.test_hold_refusals import booking_service, callers

MONDAY_10_NY = datetime(2027, 3, 1, 15, tzinfo=UTC)
MONDAY_14_NY = "2027-03-01T19:00:00Z"
HOUR = timedelta(hours=1)


async def confirm(
    service: BookingService, caller: Caller, hold_id: str, idem: Idempotency | None = None
) -> tuple[int, Any]:
    """Confirm a hold, as `POST /v1/bookings {"hold_id": ..., "customer": "Ada"}` does."""
    return await service.confirm(
        caller,
        hold_id=hold_id,
        service_id=None,
        start=None,
        pins=(),
        customer="Ada",
        idem=idem,
        request_id=None,
    )


async def waiting_statement(
    admin: psycopg.Connection[tuple[object, ...]], locktype: str = "advisory"
) -> str:
    """The statement of the backend waiting for a lock of ``locktype``, once one does."""
    for _ in range(1000):
        row = admin.execute(
            "SELECT a.query FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE l.locktype = %s AND NOT l.granted",
            (locktype,),
        ).fetchone()
        if row is not None:
            return str(row[0])
        await asyncio.sleep(0.02)
    raise AssertionError("no backend waited for an advisory lock")


def test_a_day_filled_between_the_read_and_the_booking_is_refused(api: Api, infra: Infra) -> None:
    """Capacity 1 a day. While the booking statement waits for the staff member's lock,
    another booking takes that day at another hour: nothing overlaps, so only the re-read
    under the lock (the day's load changed) stands between the staff member and a second
    appointment that day; the transaction then refuses it."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers(), rooms=0, daily_capacity=1)
    (staff,) = tenant.staff
    caller, _ = callers(infra.admin_url, tenant.id)

    async def confirm_while_the_day_fills() -> str:
        async with booking_service(infra) as service:
            held = await service.create_hold(
                caller, tenant.service_id, MONDAY_10_NY, [], None, None, None
            )
            with psycopg.connect(infra.admin_url, autocommit=True) as admin:
                admin.execute("SELECT pg_advisory_lock(%s)", (lock_key(staff),))
                confirming = asyncio.create_task(confirm(service, caller, held["id"]))
                waiting = await waiting_statement(admin)
                take_directly(admin, tenant.id, tenant.service_id, staff, MONDAY_14_NY)
                admin.execute("SELECT pg_advisory_unlock_all()")
                with pytest.raises(CapacityExceeded) as refused:
                    await confirming
            assert refused.value.extra["why"]["reason"] == "capacity_reached"
            return waiting

    waiting = asyncio.run(confirm_while_the_day_fills())

    assert "book_window" in waiting  # the fast path waited, not the transaction
    monday = MONDAY_10_NY.date()
    assert len(booked_on(infra.admin_url, staff, NEW_YORK, monday)) == 1
    assert overlaps(infra.admin_url) == []


@pytest.mark.parametrize("capacity", [1, 2])
def test_a_hold_confirmed_after_its_day_changed(api: Api, infra: Infra, capacity: int) -> None:
    """The worker remembers the window its hold's check read, and confirming the hold starts
    from that read. Between the two, another booking takes the staff member's day: with
    capacity 1 the confirmation is refused, with 2 it books (the stale read is read again)."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers(), rooms=0, daily_capacity=capacity)
    (staff,) = tenant.staff
    caller, _ = callers(infra.admin_url, tenant.id)

    async def hold_then_confirm() -> tuple[int, Any]:
        async with booking_service(infra) as service:
            held = await service.create_hold(
                caller, tenant.service_id, MONDAY_10_NY, [], None, None, None
            )
            with psycopg.connect(infra.admin_url, autocommit=True) as admin:
                take_directly(admin, tenant.id, tenant.service_id, staff, MONDAY_14_NY)
            return await confirm(service, caller, held["id"])

    monday = MONDAY_10_NY.date()
    if capacity == 1:
        with pytest.raises(CapacityExceeded):
            asyncio.run(hold_then_confirm())
        assert len(booked_on(infra.admin_url, staff, NEW_YORK, monday)) == 1
    else:
        status, booked = asyncio.run(hold_then_confirm())
        assert status == 201
        assert booked["id"] in booked_on(infra.admin_url, staff, NEW_YORK, monday)
        assert len(booked_on(infra.admin_url, staff, NEW_YORK, monday)) == 2


def test_a_hold_is_booked_in_one_statement_by_the_worker_that_took_it(
    api: Api, infra: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker that took a hold remembers its check's read: the confirmation is
    `book_window` alone. Another worker (its catalog cached too) reads the window first."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers(), rooms=0)
    caller, _ = callers(infra.admin_url, tenant.id)
    statements = spy_on_window_statements(monkeypatch)

    async def confirm_on_both() -> tuple[list[str], list[str]]:
        async with booking_service(infra) as here, booking_service(infra) as there:
            held = [
                await here.create_hold(
                    caller, tenant.service_id, MONDAY_10_NY + k * HOUR, [], None, None, None
                )
                for k in range(2)
            ]
            await there.create_hold(
                caller, tenant.service_id, MONDAY_10_NY + 2 * HOUR, [], None, None, None
            )
            statements.clear()
            assert (await confirm(here, caller, held[0]["id"]))[0] == 201
            same_worker = list(statements)
            statements.clear()
            assert (await confirm(there, caller, held[1]["id"]))[0] == 201
            return same_worker, list(statements)

    same_worker, other_worker = asyncio.run(confirm_on_both())

    assert same_worker == ["booked"]
    assert other_worker == ["read", "booked"]


def test_the_key_is_claimed_before_the_locks_are_taken(
    api: Api, infra: Infra, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in every booking transaction, the Idempotency-Key is claimed before the advisory
    locks: a transaction holding an uncommitted claim of the key (an earlier attempt of the
    request) gets the resource's lock at once while the confirmation waits for the key, and
    once it rolls back the confirmation books. In the other order the two would deadlock, and
    PostgreSQL would abort one of them."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers(), rooms=0)
    (staff,) = tenant.staff
    caller, _ = callers(infra.admin_url, tenant.id)
    statements = spy_on_window_statements(monkeypatch)

    async def confirm_behind_a_claim() -> tuple[int, Any]:
        async with booking_service(infra) as service:
            held = await service.create_hold(
                caller, tenant.service_id, MONDAY_10_NY, [], None, None, None
            )
            body = {"hold_id": held["id"], "customer": "Ada"}
            idem = Idempotency.of("attempt", "POST", "/v1/bookings", body)
            assert idem is not None
            statements.clear()
            with psycopg.connect(infra.admin_url) as admin:  # one transaction
                admin.execute(
                    "INSERT INTO idempotency_keys (tenant_id, key, request_hash, status, response)"
                    " VALUES (%s, %s, %s, 0, 'null')",
                    (tenant.id, idem.key, idem.fingerprint),
                )
                confirming = asyncio.create_task(confirm(service, caller, held["id"], idem))
                await waiting_statement(admin, "transactionid")
                admin.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(staff),))
                admin.rollback()
            return await confirming

    status, _ = asyncio.run(confirm_behind_a_claim())

    assert status == 201
    assert statements == ["booked"]  # by `book_window`, which waited for the key
    assert row_counts(infra.admin_url, tenant.id)["bookings"] == 1


def spy_on_window_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the service's window statements do, in order: "read" for each `read_window`, the
    outcome of each `book_window` (the real functions run)."""
    statements: list[str] = []
    read_window, book_window = repo.read_window, repo.book_window

    async def read_window_spy(*args: Any, **kwargs: Any) -> list[repo.WindowRow]:
        statements.append("read")
        return await read_window(*args, **kwargs)

    async def book_window_spy(*args: Any, **kwargs: Any) -> Any:
        row = await book_window(*args, **kwargs)
        statements.append(row["outcome"] if row else "none")
        return row

    monkeypatch.setattr(repo, "read_window", read_window_spy)
    monkeypatch.setattr(repo, "book_window", book_window_spy)
    return statements


def test_the_answer_is_the_booking_read_back_and_what_its_key_replays(
    api: Api, infra: Infra
) -> None:
    """A confirmation's answer, `created_at` included (the booking statement's own), is the
    booking as read back, and what its Idempotency-Key replays. The key sent again with
    another hold is refused: the booking statement finds it claimed by another request."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers(), rooms=0)
    caller, _ = callers(infra.admin_url, tenant.id)

    def idem(hold_id: str) -> Idempotency | None:
        body = {"hold_id": hold_id, "customer": "Ada"}
        return Idempotency.of("confirm-once", "POST", "/v1/bookings", body)

    async def book_and_retry() -> None:
        async with booking_service(infra) as service:
            first = await service.create_hold(
                caller, tenant.service_id, MONDAY_10_NY, [], None, None, None
            )
            booked = await confirm(service, caller, first["id"], idem(first["id"]))
            assert booked[0] == 201
            read_back = await service.get_booking(caller, booked[1]["id"], None)
            assert read_back == booked[1]
            assert await confirm(service, caller, first["id"], idem(first["id"])) == booked
            later = MONDAY_10_NY + timedelta(hours=5)
            other = await service.create_hold(
                caller, tenant.service_id, later, [], None, None, None
            )
            with pytest.raises(IdempotencyMismatch):
                await confirm(service, caller, other["id"], idem(other["id"]))

    asyncio.run(book_and_retry())

    assert row_counts(infra.admin_url, tenant.id)["bookings"] == 1


def test_book_window_books_only_the_window_it_was_shown(api: Api, infra: Infra) -> None:
    """`book_window` handed the window as it reads, but for one row missing, doubled or
    changed (the catalog version; a day's load, counted from another booking that day):
    'changed', and no booking, no claimed key, no audit event. A NULL in place of the rows
    is an error, not "nothing seen". Handed the window as it reads, it books."""
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        tenant = make_tenant(client, api.admin_headers(), rooms=0, daily_capacity=3)
    (staff,) = tenant.staff
    with psycopg.connect(infra.admin_url, autocommit=True) as admin:
        take_directly(admin, tenant.id, tenant.service_id, staff, MONDAY_14_NY)
    start, end = MONDAY_10_NY, MONDAY_10_NY + timedelta(hours=1)
    booking_id = str(uuid.uuid4())  # ids are unique across tenants: not a constant
    booking = {"id": booking_id, "service_id": tenant.service_id, "customer": "Ada"}
    link = {
        "booking_id": booking_id,
        "resource_id": staff,
        "requirement_index": 0,
        "service_id": tenant.service_id,
        "local_day": "2027-03-01",
        "minutes": 60,
    }
    documents = (
        json.dumps([{**booking, "starts_at": start.isoformat(), "ends_at": end.isoformat()}]),
        json.dumps([{**link, "lo": start.isoformat(), "hi": end.isoformat()}]),
    )
    window = (tenant.id, [staff], start, end, [staff], date(2027, 2, 28), date(2027, 3, 2))
    read = (
        "SELECT * FROM calendar_window(%s, %s::uuid[], %s, %s, '{}', false, %s::uuid[], %s, %s,"
        " '{}')"
    )
    call = (
        "SELECT outcome FROM book_window(%s, %s::uuid[], %s, %s, '{}', false, %s::uuid[], %s,"
        " %s, ARRAY[%s]::bigint[], %s, 'a-key', '\\x00', %s, %s, '{}', %s)"
    )
    event: dict[str, Any] = {
        "actor": "test",
        "action": "booking.create",
        "entity": "booking",
        "entity_id": booking_id,
        "request_id": None,
        "detail": {},
    }
    with psycopg.connect(infra.app_url, autocommit=True, row_factory=dict_row) as conn:
        rows = conn.execute(read, window).fetchall()
        assert sorted(r["entry"] for r in rows) == ["load", "version"]
        version = next(r for r in rows if r["entry"] == "version")
        load = next(r for r in rows if r["entry"] == "load")
        others = [
            [r for r in rows if r is not version],
            [*rows, version],
            [r for r in rows if r is not version] + [{**version, "n": version["n"] + 1}],
            [r for r in rows if r is not load] + [{**load, "n": load["n"] + 1}],
        ]
        for seen in others:
            outcome = conn.execute(
                call, (*window, lock_key(staff), dumps(seen), *documents, json.dumps(event))
            )
            assert outcome.fetchone() == {"outcome": "changed"}
        with pytest.raises(psycopg.errors.NullValueNotAllowed):
            conn.execute(call, (*window, lock_key(staff), None, *documents, json.dumps(event)))
        assert written(infra, tenant.id) == (1, 0, 0)

        booked = conn.execute(
            call, (*window, lock_key(staff), dumps(rows), *documents, json.dumps(event))
        )
        assert booked.fetchone() == {"outcome": "booked"}
    assert written(infra, tenant.id) == (2, 1, 1)


def dumps(rows: list[dict[str, Any]]) -> str:
    """Rows of `calendar_window` as `book_window` takes them (see `repository.book_window`)."""
    return json.dumps(rows, default=str)


def written(infra: Infra, tenant_id: str) -> tuple[int, int, int]:
    """The tenant's bookings, claimed Idempotency-Keys and audited booking creations."""
    counts = row_counts(infra.admin_url, tenant_id)
    with psycopg.connect(infra.admin_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM audit_events WHERE tenant_id = %s AND action = 'booking.create'",
            (tenant_id,),
        ).fetchone()
    assert row is not None
    return counts["bookings"], counts["idempotency_keys"], int(row[0])


@settings(max_examples=300, deadline=None)
@example(datetime(2027, 3, 1, 15, tzinfo=UTC))
@example(datetime(2027, 3, 1, 15, 0, 0, 1, tzinfo=UTC))
@given(
    st.datetimes(
        min_value=datetime(1970, 1, 1),
        max_value=datetime(9999, 12, 30),
        timezones=st.just(UTC),
    )
)
def test_the_database_writes_an_instant_as_the_service_does(infra: Infra, at: datetime) -> None:
    """`format_instant`, which writes the `created_at` of a booking's stored answer, against
    the service's own `iso` (microseconds, often zero here, only when there are some)."""
    with psycopg.connect(infra.app_url, autocommit=True) as conn:
        row = conn.execute("SELECT format_instant(%s)", (at,)).fetchone()
    assert row == (iso(at),)
