"""`slotwise bench booking`: end-to-end hold + confirm over HTTP vs raw lock + insert.

One run, one throwaway PostgreSQL + Valkey pair, one live server:
- HTTP: concurrent clients each take a distinct (staff member, start), POST /v1/holds, then
  POST /v1/bookings with the hold — the full three-layer protocol;
- raw: the same number of concurrent psycopg clients run `pg_advisory_xact_lock` + INSERT
  transactions against the same database — the floor any booking path pays — once before
  the HTTP run and once after; the baseline is their combined rate;
- availability: sequential GETs of 14 days of availability over HTTP, after the bookings;
- double bookings: a SQL self-join over every active booking_resources pair.

With ``history``, each staff member first gets that many past bookings (one every 6 hours
back from the first target day), written in bulk by the admin: what a calendar in use for
years has behind it, which no read of the coming weeks should have to go through.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import httpx
import psycopg
from psycopg_pool import AsyncConnectionPool

from service.infra import Endpoints, throwaway
from service.migrate import migrate
from service.server import ServerSecrets, running_server

OVERLAPS_SQL = """
SELECT count(*) FROM booking_resources a JOIN booking_resources b
  ON a.resource_id = b.resource_id AND a.booking_id < b.booking_id AND a.during && b.during
 WHERE a.active AND b.active
"""
FIRST_DAY = datetime(2027, 1, 4, tzinfo=UTC)  # a Monday, in the future for years of runs


def _setup(
    client: httpx.Client, admin_key: str, staff: int
) -> tuple[dict[str, str], str, list[str]]:
    r = client.post(
        "/v1/tenants",
        json={"name": "Bench", "zone": "UTC"},
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    r.raise_for_status()
    headers = {"Authorization": f"Bearer {r.json()['api_key']['token']}"}
    staff_ids = []
    for i in range(staff):
        r = client.post(
            "/v1/resources",
            json={
                "kind": "staff",
                "name": f"Staff {i}",
                "zone": "UTC",
                "skills": ["cut"],
                "working_hours": [
                    {
                        "starts_local": "2027-01-01T08:00:00",
                        "duration_minutes": 720,
                        "rrule": "FREQ=DAILY",
                    }
                ],
            },
            headers=headers,
        )
        r.raise_for_status()
        staff_ids.append(r.json()["id"])
    r = client.post(
        "/v1/services",
        json={
            "name": "Cut",
            "duration_minutes": 30,
            "step_minutes": 30,
            "requirements": [{"kind": "staff", "skills": ["cut"]}],
        },
        headers=headers,
    )
    r.raise_for_status()
    return headers, r.json()["id"], staff_ids


def _add_history(admin_url: str, service_id: str, staff_ids: list[str], per_staff: int) -> None:
    """``per_staff`` past 30-minute bookings for each staff member, before `FIRST_DAY`."""
    params = {"s": service_id, "staff": staff_ids, "n": per_staff, "first": FIRST_DAY}
    with psycopg.connect(admin_url) as conn, conn.transaction():
        conn.execute(
            "CREATE TEMP TABLE history ON COMMIT DROP AS"
            " SELECT gen_random_uuid() AS id, staff, %(first)s - n * interval '6 hours' AS at"
            " FROM unnest(%(staff)s::uuid[]) AS staff, generate_series(1, %(n)s) AS n",
            params,
        )
        conn.execute(
            "INSERT INTO bookings (id, tenant_id, service_id, status, starts_at, ends_at)"
            " SELECT h.id, s.tenant_id, s.id, 'confirmed', h.at, h.at + interval '30 minutes'"
            " FROM history h, services s WHERE s.id = %(s)s",
            params,
        )
        conn.execute(
            "INSERT INTO booking_resources (tenant_id, booking_id, resource_id,"
            " requirement_index, service_id, during, local_day, minutes)"
            " SELECT s.tenant_id, h.id, h.staff, 0, s.id,"
            " tstzrange(h.at, h.at + interval '30 minutes'), (h.at AT TIME ZONE 'UTC')::date, 30"
            " FROM history h, services s WHERE s.id = %(s)s",
            params,
        )
        conn.execute("ANALYZE bookings, booking_resources")  # plans fit for the new rows


def _targets(staff_ids: list[str], count: int) -> list[tuple[str, datetime]]:
    """Distinct (staff, start) pairs inside working hours, day by day."""
    out: list[tuple[str, datetime]] = []
    day = 0
    while len(out) < count:
        for slot in range(24):  # 08:00-20:00 in 30-minute slots
            for sid in staff_ids:
                start = FIRST_DAY + timedelta(days=day, hours=8, minutes=30 * slot)
                out.append((sid, start))
        day += 1
    return out[:count]


async def _http_run(
    base_url: str,
    headers: dict[str, str],
    service_id: str,
    targets: list[tuple[str, datetime]],
    concurrency: int,
) -> tuple[float, Counter[int], list[str]]:
    queue: asyncio.Queue[tuple[str, datetime]] = asyncio.Queue()
    for target in targets:
        queue.put_nowait(target)
    outcomes: Counter[int] = Counter()
    confirmed: list[str] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        base_url, headers=headers, connector=connector, timeout=timeout
    ) as client:

        async def worker() -> None:
            while not queue.empty():
                staff_id, start = queue.get_nowait()
                hold_body = {
                    "service_id": service_id,
                    "start": start.isoformat(),
                    "resource_ids": [staff_id],
                }
                async with client.post("/v1/holds", json=hold_body) as hold:
                    held = await hold.json(content_type=None)
                    if hold.status != 201:
                        outcomes[hold.status] += 1
                        continue
                async with client.post(
                    "/v1/bookings",
                    json={"hold_id": held["id"]},
                    headers={"Idempotency-Key": secrets.token_hex(8)},
                ) as done:
                    body = await done.json(content_type=None)
                    outcomes[done.status] += 1
                    if done.status == 201:
                        confirmed.append(body["id"])

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, outcomes, confirmed


async def _raw_run(admin_url: str, count: int, concurrency: int) -> float:
    """The floor: advisory lock + insert transactions, same database, same concurrency."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_raw")
        conn.execute(
            "CREATE TABLE bench_raw (id bigserial PRIMARY KEY, resource bigint, during tstzrange)"
        )
    async with AsyncConnectionPool(
        admin_url, min_size=concurrency, max_size=concurrency, open=False
    ) as pool:
        await pool.wait()
        remaining = iter(range(count))

        async def worker() -> None:
            for i in remaining:
                async with pool.connection() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (i % 997,))
                    start = FIRST_DAY + timedelta(minutes=30 * i)
                    await conn.execute(
                        "INSERT INTO bench_raw (resource, during) VALUES (%s, tstzrange(%s, %s))",
                        (i % 997, start, start + timedelta(minutes=30)),
                    )

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


def _availability_p50(
    base_url: str, headers: dict[str, str], service_id: str, samples: int
) -> float:
    times = []
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        params = {"from": FIRST_DAY.isoformat(), "to": (FIRST_DAY + timedelta(days=14)).isoformat()}
        client.get(f"/v1/services/{service_id}/availability", params=params).raise_for_status()
        for _ in range(samples):
            started = time.perf_counter()
            client.get(f"/v1/services/{service_id}/availability", params=params).raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def run(
    bookings: int = 2000, concurrency: int = 32, staff: int = 40, workers: int = 2, history: int = 0
) -> dict[str, Any]:
    with throwaway() as endpoints:
        migrate(endpoints.admin_url, app_url=endpoints.app_url)
        keys = ServerSecrets("bench-admin-" + secrets.token_hex(16), secrets.token_hex(32))
        with running_server(
            Endpoints(endpoints.admin_url, endpoints.app_url, endpoints.redis_url),
            keys,
            workers=workers,
        ) as base_url:
            with httpx.Client(base_url=base_url, timeout=60) as client:
                headers, service_id, staff_ids = _setup(client, keys.admin_key, staff)
            if history:
                _add_history(endpoints.admin_url, service_id, staff_ids, history)
            targets = _targets(staff_ids, bookings)
            # The baseline runs before and after the HTTP run: a shared machine's speed drifts
            # within a run, and one side alone would carry that drift into the ratio.
            raw_before_s = asyncio.run(_raw_run(endpoints.admin_url, bookings, concurrency))
            http_s, outcomes, confirmed = asyncio.run(
                _http_run(base_url, headers, service_id, targets, concurrency)
            )
            raw_after_s = asyncio.run(_raw_run(endpoints.admin_url, bookings, concurrency))
            availability_ms = _availability_p50(base_url, headers, service_id, samples=30)
        with psycopg.connect(endpoints.admin_url) as conn:
            double = conn.execute(OVERLAPS_SQL).fetchone()
            stored = conn.execute(
                "SELECT count(*) FROM bookings WHERE id = ANY(%s::uuid[]) AND status = 'confirmed'",
                (confirmed,),
            ).fetchone()
            past = conn.execute(
                "SELECT count(*) FROM bookings WHERE starts_at < %s", (FIRST_DAY,)
            ).fetchone()
    confirmed_per_s = len(confirmed) / http_s
    raw_per_s = 2 * bookings / (raw_before_s + raw_after_s)
    return {
        "bench": "booking",
        "confirmed_per_s": round(confirmed_per_s, 1),
        "raw_lock_insert_per_s": round(raw_per_s, 1),
        "raw_runs_per_s": [round(bookings / raw_before_s, 1), round(bookings / raw_after_s, 1)],
        "ratio": round(confirmed_per_s / raw_per_s, 3),
        "availability_p50_ms": round(availability_ms, 2),
        "double_bookings": int(double[0]) if double else -1,
        "confirmed": len(confirmed),
        "acknowledged_in_db": int(stored[0]) if stored else -1,
        "outcomes": {str(k): v for k, v in sorted(outcomes.items())},
        "concurrency": concurrency,
        "workers": workers,
        "history_per_staff": history,
        "history_in_db": int(past[0]) if past else -1,
    }
