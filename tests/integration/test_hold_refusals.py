"""Layer 1 refusing before PostgreSQL: a hold whose pins fix every resource, on a slot another
caller holds, is refused from Valkey alone; its audit event goes through the batched writer,
many events to a transaction, each committed before its refusal returns. Run in-process on the
real servers, so the test knows which worker's catalog cache answered."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from litestar.testing import AsyncTestClient
from redis import Redis as SyncRedis

from service.app import AppConfig, create_app
from service.audit_batch import BatchedAudit
from service.auth import Caller
from service.booking import IN_TRANSACTION_HOLDS_S, BookingService
from service.db import Database
from service.errors import ServiceError, SlotConflict, Unavailable
from service.holds import Claim, HoldTokens, RedisHoldStore, new_nonce, valkey_client
from tests.integration.conftest import Api, Infra
from tests.integration.tenancy import Tenant, make_tenant

START = datetime(2027, 3, 1, 15, 0, tzinfo=UTC)  # a Monday, 10:00 in New York


@pytest.fixture
def tenant(api: Api) -> Iterator[Tenant]:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        yield make_tenant(client, api.admin_headers())


def callers(admin_url: str, tenant_id: str) -> tuple[Caller, Caller]:
    """Two callers of one tenant (the key and a second identity): holds are per caller."""
    with psycopg.connect(admin_url) as conn:
        row = conn.execute("SELECT id::text FROM api_keys WHERE tenant_id = %s", (tenant_id,))
        key_id = row.fetchone()
    assert key_id is not None
    scopes = frozenset({"read", "book"})
    return Caller(key_id[0], tenant_id, scopes), Caller("other-" + key_id[0], tenant_id, scopes)


def refused_events(admin_url: str, tenant_id: str) -> list[tuple[str, str]]:
    """(actor, inserting transaction) of each audited hold refusal from the batched writer."""
    with psycopg.connect(admin_url) as conn:
        rows = conn.execute(
            "SELECT actor, xmin::text FROM audit_events WHERE tenant_id = %s"
            " AND action = 'hold.create' AND detail ->> 'refused' = 'held'",
            (tenant_id,),
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


@contextlib.asynccontextmanager
async def booking_service(infra: Infra, connections: int = 8) -> AsyncIterator[BookingService]:
    """The booking use cases in this process, on the session's real servers."""
    db = await Database.open(infra.app_url, min(2, connections), connections)
    valkey = valkey_client(infra.redis_url)
    try:
        yield BookingService(
            db,
            RedisHoldStore(valkey),
            HoldTokens(b"k" * 32),
            lambda: datetime(2027, 1, 4, tzinfo=UTC),
            BatchedAudit(db),
        )
    finally:
        await valkey.aclose()
        await db.close()


async def run_refusals(infra: Infra, tenant: Tenant, attempts: int) -> list[SlotConflict]:
    async with booking_service(infra) as service:
        holder, rival = callers(infra.admin_url, tenant.id)
        pins = [tenant.staff[0], tenant.rooms[0]]
        held = await service.create_hold(holder, tenant.service_id, START, pins, None, None, "h")
        assert held["degraded"] is False

        async def attempt(i: int) -> SlotConflict:
            overlapping = START + timedelta(minutes=30 * (i % 2))  # the held hour, or half over it
            with pytest.raises(SlotConflict) as refused:
                await service.create_hold(
                    rival, tenant.service_id, overlapping, pins, None, None, f"r{i}"
                )
            return refused.value

        refusals = await asyncio.gather(*(attempt(i) for i in range(attempts)))
        # Pins that leave a choice (no room named) go the full way, and are refused too.
        with pytest.raises(SlotConflict) as full:
            await service.create_hold(
                rival, tenant.service_id, START, [tenant.staff[0]], None, None, "f"
            )
        assert full.value.extra["why"]["reason"] == "conflict"
        return list(refusals)


def test_pinned_losers_are_refused_from_valkey_and_audited_in_batches(
    infra: Infra, tenant: Tenant
) -> None:
    refusals = asyncio.run(run_refusals(infra, tenant, attempts=40))
    for refusal in refusals:
        why = refusal.extra["why"]
        assert why["reason"] == "held"
        assert why["resource_id"] in {tenant.staff[0], tenant.rooms[0]}
        assert why["start"] == START.isoformat().replace("+00:00", "Z")
    events = refused_events(infra.admin_url, tenant.id)
    assert len(events) == 40  # every refusal was audited (and committed before it returned)
    assert {actor for actor, _ in events} == {
        "other-" + callers(infra.admin_url, tenant.id)[0].key_id
    }
    transactions = {xact for _, xact in events}
    assert len(transactions) < len(events), "concurrent refusals share audit transactions"


def test_batched_audit_keeps_tenants_apart_and_reports_the_catalog_version(
    api: Api, infra: Infra
) -> None:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        first = make_tenant(client, api.admin_headers())
        second = make_tenant(client, api.admin_headers(), staff=2)
    with psycopg.connect(infra.admin_url) as conn:
        versions = dict(
            conn.execute(
                "SELECT id::text, catalog_version FROM tenants WHERE id = ANY(%s::uuid[])",
                ([first.id, second.id],),
            ).fetchall()
        )

    async def append_all() -> list[int]:
        db = await Database.open(infra.app_url, 2, 4)
        try:
            batch = BatchedAudit(db)
            appends = [
                batch.append(
                    Caller(f"key-{i}", tenant.id, frozenset({"book"})),
                    "test.batched",
                    "service",
                    None,
                    f"req-{i}",
                    {"i": i},
                )
                for i in range(30)
                for tenant in (first, second)
            ]
            return list(await asyncio.gather(*appends))
        finally:
            await db.close()

    answered = asyncio.run(append_all())
    assert answered == [versions[t.id] for _ in range(30) for t in (first, second)]
    with psycopg.connect(infra.admin_url) as conn:
        stored = conn.execute(
            "SELECT tenant_id::text, count(*), count(DISTINCT request_id) FROM audit_events"
            " WHERE action = 'test.batched' AND tenant_id = ANY(%s::uuid[]) GROUP BY 1",
            ([first.id, second.id],),
        ).fetchall()
    assert sorted(stored) == sorted([(first.id, 30, 30), (second.id, 30, 30)])


def test_a_confirmed_hold_lingers_until_its_booking_is_cancelled(
    infra: Infra, tenant: Tenant
) -> None:
    async def scenario() -> None:
        async with booking_service(infra) as service:
            holder, rival = callers(infra.admin_url, tenant.id)
            pins = [tenant.staff[0], tenant.rooms[0]]
            held = await service.create_hold(
                holder, tenant.service_id, START, pins, None, None, "h"
            )
            status, booked = await service.confirm(
                holder,
                hold_id=held["id"],
                service_id=None,
                start=None,
                pins=[],
                customer="Ada",
                idem=None,
                request_id="c",
            )
            assert status == 201
            # The rush after the booking is refused in Valkey, by the hold that stayed ...
            with pytest.raises(SlotConflict) as late:
                await service.create_hold(rival, tenant.service_id, START, pins, None, None, "l")
            assert late.value.extra["why"]["reason"] == "held"
            # ... which availability does not read as a hold: that time is booked now.
            window = (int(START.timestamp() * 1000), int(START.timestamp() * 1000) + 3_600_000)
            assert await service.holds.live_claims(tenant.id, pins, *window) == {}
            # Cancelling frees the slot at once, in Valkey too.
            await service.cancel(holder, booked["id"], None, "x")
            again = await service.create_hold(
                rival, tenant.service_id, START, pins, None, None, "a"
            )
            assert {r["resource_id"] for r in again["resources"]} == set(pins)

    asyncio.run(scenario())


def test_a_rush_of_holds_is_taken_in_valkey_not_degraded(infra: Infra) -> None:
    """A thousand concurrent holds on one worker's client: every one is taken in Valkey.
    (redis-py's default pool refused past 100 connections in use, and those holds silently
    degraded to non-exclusive ones.)"""
    rush = 1000
    tenant_id = "rush-" + new_nonce()

    async def acquire_all() -> list[object]:
        valkey = valkey_client(infra.redis_url)
        store = RedisHoldStore(valkey)
        try:
            claims = [Claim(f"r{i}", 0, 60_000) for i in range(rush)]
            return await asyncio.gather(
                *(
                    store.acquire(tenant_id, new_nonce(), [claim], timedelta(seconds=30))
                    for claim in claims
                ),
                return_exceptions=True,
            )
        finally:
            await valkey.aclose()

    outcomes = asyncio.run(acquire_all())
    assert outcomes == [None] * rush  # None: held, no clash, no HoldStoreDown


def test_a_paused_valkey_does_not_hold_up_a_direct_booking(infra: Infra, tenant: Tenant) -> None:
    """A direct booking plans around live holds inside its transaction. When Valkey stops
    answering, the plan gives up on it after IN_TRANSACTION_HOLDS_S and books on layers 2
    and 3, rather than keep a PostgreSQL connection (and its locks) for the socket timeout."""
    pause_ms = 4000

    async def scenario() -> tuple[int, float]:
        async with booking_service(infra) as service:
            holder, _ = callers(infra.admin_url, tenant.id)
            pins = [tenant.staff[0], tenant.rooms[0]]
            await service.holds.live_claims(tenant.id, pins, 0, 1)  # a connection is open
            with SyncRedis.from_url(infra.redis_url) as admin:
                admin.execute_command("CLIENT", "PAUSE", str(pause_ms), "ALL")
            started = time.monotonic()
            status, _ = await service.confirm(
                holder,
                hold_id=None,
                service_id=tenant.service_id,
                start=START + timedelta(hours=2),
                pins=pins,
                customer="Ada",
                idem=None,
                request_id="d",
            )
            return status, time.monotonic() - started

    try:
        status, waited_s = asyncio.run(scenario())
    finally:
        with SyncRedis.from_url(infra.redis_url, socket_timeout=pause_ms / 1000 + 5) as admin:
            admin.ping()  # answered once the pause is over: later tests find Valkey back
    assert status == 201
    assert waited_s < IN_TRANSACTION_HOLDS_S + 1.0  # the socket timeout alone is 2 s


async def three_waiting_for_one_batch(
    batch: BatchedAudit, caller: Caller, action: str
) -> list[asyncio.Future[int]]:
    """One event written (request "r0"), then three ("q0".."q2") queued for the next batch,
    which the writer starts only once `gather_s` has passed since the first."""
    await batch.append(caller, action, "service", None, "r0", {})
    return [
        asyncio.ensure_future(batch.append(caller, action, "service", None, f"q{i}", {}))
        for i in range(3)
    ]


def test_a_cancelled_audit_writer_fails_its_waiters_and_the_next_event_is_written(
    infra: Infra, tenant: Tenant
) -> None:
    """Shutdown cancels the batched writer: every event still queued learns it was not
    written (none hangs, none is answered later as written), and a later event is written."""

    async def scenario() -> tuple[list[BaseException | int], int]:
        db = await Database.open(infra.app_url, 1, 2)
        try:
            batch = BatchedAudit(db, gather_s=1.0)
            caller = Caller("cancel-test", tenant.id, frozenset({"book"}))
            queued = await three_waiting_for_one_batch(batch, caller, "test.cancel")
            await asyncio.sleep(0.1)  # the writer waits out gather_s before their batch
            assert batch._writer is not None
            batch._writer.cancel()
            answers = await asyncio.wait_for(
                asyncio.gather(*queued, return_exceptions=True), timeout=10
            )
            later = await batch.append(caller, "test.cancel", "service", None, "later", {})
            return answers, later
        finally:
            await db.close()

    answers, later = asyncio.run(scenario())
    assert all(isinstance(a, Unavailable) for a in answers), answers
    assert later >= 0
    with psycopg.connect(infra.admin_url) as conn:
        written = conn.execute(
            "SELECT request_id FROM audit_events WHERE tenant_id = %s AND action = 'test.cancel'"
            " ORDER BY id",
            (tenant.id,),
        ).fetchall()
    assert [r[0] for r in written] == ["r0", "later"]


def test_audit_batches_do_not_queue_behind_requests_for_a_connection(
    infra: Infra, tenant: Tenant
) -> None:
    """In a rush, requests queue for the worker's pool; the batched audit writer has its own
    connection, so a refusal from Valkey is answered even while every pool connection is
    taken (sharing the pool, it waited for the pool's timeout and answered 503)."""
    config = AppConfig(
        app_database_url=infra.app_url,
        redis_url=infra.redis_url,
        admin_key="admin-" + "k" * 40,
        hold_secret=b"h" * 32,
        pool_min=1,
        pool_max=1,
        auth_cache_seconds=60,  # the key's lookup stays cached: the refusal needs no pool
    )
    app = create_app(config)
    body = {
        "service_id": tenant.service_id,
        "start": START.isoformat(),
        "resource_ids": [tenant.staff[0], tenant.rooms[0]],
    }

    async def scenario() -> tuple[int, int, float]:
        async with AsyncTestClient(app) as client:
            first = await client.post("/v1/holds", json=body, headers=tenant.headers)
            async with app.state.booking.db.pool.connection():  # the pool's only connection
                started = time.monotonic()
                second = await client.post("/v1/holds", json=body, headers=tenant.headers)
                waited = time.monotonic() - started
        return first.status_code, second.status_code, waited

    thresholds = gc.get_threshold()
    try:
        first, second, waited = asyncio.run(scenario())
    finally:  # the app's start-up tunes the collector of the process it runs in: this one
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    assert (first, second) == (201, 409)
    assert waited < 2.0


def test_releasing_a_degraded_hold_clears_what_its_acquire_left_in_valkey(
    infra: Infra, tenant: Tenant
) -> None:
    """An acquire whose answer was lost to a timeout leaves its caller a degraded hold while
    the script did run in Valkey. Releasing the hold must clear that too, or it would refuse
    everyone else until its TTL ran out."""

    async def scenario() -> dict[str, object]:
        async with booking_service(infra) as service:
            holder, rival = callers(infra.admin_url, tenant.id)
            pins = [tenant.staff[0], tenant.rooms[0]]
            held = await service.create_hold(
                holder, tenant.service_id, START, pins, None, None, "h"
            )
            # What a lost answer leaves: the hold live in Valkey, its token saying "degraded".
            hold = service.tokens.read(held["id"], tenant.id, holder.key_id, service.clock())
            lost = service.tokens.issue(replace(hold, degraded=True))
            await service.release_hold(holder, lost, "r")
            return await service.create_hold(rival, tenant.service_id, START, pins, None, None, "a")

    again = asyncio.run(scenario())
    assert again["degraded"] is False


def test_a_hold_checked_against_a_stale_cached_catalog_is_decided_by_the_current_one(
    infra: Infra, tenant: Tenant
) -> None:
    """A hold's check is one statement outside any transaction, with the worker's cached
    catalog, and that statement reports the catalog version it saw. A catalog changed since
    (here: the staff member deactivated) must be noticed and the hold decided on the current
    catalog, as a worker with nothing cached decides it."""

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with booking_service(infra) as stale, booking_service(infra) as fresh:
            holder, _ = callers(infra.admin_url, tenant.id)
            pins = [tenant.staff[0], tenant.rooms[0]]
            first = await stale.create_hold(holder, tenant.service_id, START, pins, None, None, "a")
            assert first["resources"][0]["resource_id"] == tenant.staff[0]  # cached now
            set_active(infra, tenant, pins[0], active=False)
            later = START + timedelta(hours=2)
            refused = []
            for service in (stale, fresh):
                with pytest.raises(ServiceError) as caught:
                    await service.create_hold(
                        holder, tenant.service_id, later, pins, None, None, "b"
                    )
                refused.append(caught.value.problem())
            return refused[0], refused[1]

    from_stale_cache, from_nothing_cached = asyncio.run(scenario())
    assert from_stale_cache == from_nothing_cached  # the same answer, word for word


def test_a_caller_hanging_up_leaves_its_batch_to_be_written(infra: Infra, tenant: Tenant) -> None:
    """A request cancelled while its audit event waits for the batch (the client hung up) gives
    up only its own wait: the batch, its event included, is written, and the other callers of
    that batch get their answers."""

    async def scenario() -> list[int]:
        db = await Database.open(infra.app_url, 1, 2)
        try:
            batch = BatchedAudit(db, gather_s=0.5)
            caller = Caller("hang-up-test", tenant.id, frozenset({"book"}))
            waits = await three_waiting_for_one_batch(batch, caller, "test.hang_up")
            await asyncio.sleep(0.1)  # all three wait for the same batch (gather_s)
            waits[0].cancel()
            return list(await asyncio.wait_for(asyncio.gather(*waits[1:]), timeout=10))
        finally:
            await db.close()

    versions = asyncio.run(scenario())
    assert len(versions) == 2 and all(v >= 0 for v in versions)
    with psycopg.connect(infra.admin_url) as conn:
        written = conn.execute(
            "SELECT request_id FROM audit_events WHERE tenant_id = %s AND action = 'test.hang_up'",
            (tenant.id,),
        ).fetchall()
    assert sorted(r[0] for r in written) == ["q0", "q1", "q2", "r0"]


def set_active(infra: Infra, tenant: Tenant, resource_id: str, *, active: bool) -> None:
    """(De)activate a resource as the admin: a catalog change (the tenant is set for the
    trigger that bumps the catalog version)."""
    with psycopg.connect(infra.admin_url) as admin:
        admin.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant.id,))
        admin.execute("UPDATE resources SET active = %s WHERE id = %s", (active, resource_id))


def test_a_refusal_by_a_stale_cached_catalog_is_checked_against_the_current_one(
    infra: Infra, tenant: Tenant
) -> None:
    """The other way round: the cached catalog refuses (the pinned staff member was inactive
    when it was read) where the current one accepts (active again). A refusal from the cache
    may be an artefact of its age, so the hold is decided again on the current catalog."""

    async def scenario() -> dict[str, object]:
        async with booking_service(infra) as service:
            holder, _ = callers(infra.admin_url, tenant.id)
            pins = [tenant.staff[0], tenant.rooms[0]]
            set_active(infra, tenant, pins[0], active=False)
            with pytest.raises(ServiceError):  # and the catalog without them is cached
                await service.create_hold(holder, tenant.service_id, START, pins, None, None, "a")
            set_active(infra, tenant, pins[0], active=True)
            return await service.create_hold(
                holder, tenant.service_id, START, pins, None, None, "b"
            )

    held = asyncio.run(scenario())
    assert held["resources"] == [
        {"requirement": 0, "resource_id": tenant.staff[0]},
        {"requirement": 1, "resource_id": tenant.rooms[0]},
    ]


def test_a_pooled_connection_keeps_no_tenant_after_a_hold_or_an_audit_batch(
    infra: Infra, tenant: Tenant
) -> None:
    """A hold's check and the audit batches set the tenant for their own statement only, on
    connections outside any transaction: the pool's one connection, used by both (the second
    hold's check by the cached-catalog path), must carry no tenant into the next request."""

    async def scenario() -> object:
        async with booking_service(infra, connections=1) as service:
            holder, _ = callers(infra.admin_url, tenant.id)
            pins = [tenant.staff[0], tenant.rooms[0]]
            for hours in (0, 2):  # the first loads the catalog in a transaction
                start = START + timedelta(hours=hours)
                await service.create_hold(holder, tenant.service_id, start, pins, None, None, "a")
            async with service.db.connection() as conn:
                cur = await conn.execute("SELECT current_setting('app.tenant_id', true) AS t")
                row = await cur.fetchone()
            return None if row is None else row["t"]

    assert asyncio.run(scenario()) in (None, "")
