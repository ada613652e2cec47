"""Shared checks for the invariant tests: what the database really holds, what a query had to
read to answer, problem bodies, and requests fired at the live server all at once.

The database checks connect with the admin URL (a superuser: Row Level Security does not hide
anything from it), so they see every tenant's rows, committed ones only.
"""

from __future__ import annotations

import ssl
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psycopg
from psycopg.rows import tuple_row

PROBLEM_BASE = "https://slotwise.dev/problems/"

# Two active footprints on one resource that overlap: what the exclusion constraint forbids.
OVERLAPS_SQL = """
SELECT a.resource_id::text, a.booking_id::text, b.booking_id::text
  FROM booking_resources a
  JOIN booking_resources b
    ON b.resource_id = a.resource_id AND a.booking_id < b.booking_id AND a.during && b.during
 WHERE a.active AND b.active
"""

# A booking_resources row whose `active` flag disagrees with its booking's status.
MISMATCH_SQL = """
SELECT br.booking_id::text
  FROM booking_resources br JOIN bookings b ON b.id = br.booking_id
 WHERE br.active <> (b.status = 'confirmed')
"""


def overlaps(admin_url: str) -> list[tuple[str, str, str]]:
    """(resource, booking, booking) for every pair of active bookings overlapping on a
    resource, in the whole database; the invariant is that this is empty. Also asserts that
    every booking_resources row is active exactly when its booking is confirmed (the
    constraint only guards active rows, so a stale flag would hide an overlap)."""
    with psycopg.connect(admin_url) as conn:
        rows = conn.execute(OVERLAPS_SQL).fetchall()
        mismatched = conn.execute(MISMATCH_SQL).fetchall()
    assert mismatched == [], f"booking_resources.active disagrees with status: {mismatched}"
    return [(r[0], r[1], r[2]) for r in rows]


def active_bookings(admin_url: str, tenant_id: str) -> set[str]:
    """Ids of the tenant's confirmed bookings."""
    with psycopg.connect(admin_url) as conn:
        rows = conn.execute(
            "SELECT id::text FROM bookings WHERE tenant_id = %s AND status = 'confirmed'",
            (tenant_id,),
        ).fetchall()
    return {r[0] for r in rows}


def row_counts(admin_url: str, tenant_id: str) -> dict[str, int]:
    """How many rows of each booking table the tenant has (any status)."""
    counts = {}
    with psycopg.connect(admin_url) as conn:
        for table in ("bookings", "booking_resources", "booking_series", "idempotency_keys"):
            row = conn.execute(
                f"SELECT count(*) FROM {table} WHERE tenant_id = %s",  # table: a fixed name
                (tenant_id,),
            ).fetchone()
            assert row is not None
            counts[table] = int(row[0])
    return counts


async def fetched_rows(conn: psycopg.AsyncConnection[Any]) -> dict[str, int]:
    """Rows the current transaction has fetched so far, per table, as PostgreSQL counted them
    (whatever plans it chose): a read that should not grow with a table's history must not
    fetch it."""
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(
        "SELECT relname, seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables"
    )
    return {name: int(count) for name, count in await cur.fetchall()}


def lock_key(resource_id: str) -> int:
    """The advisory-lock key `repository.lock_keys` gives a resource (signed bigint)."""
    key = uuid.UUID(resource_id).int >> 64
    return key - (1 << 64) if key >= 1 << 63 else key


def assert_problem(
    response: httpx.Response, status: int, slug: str | None = None
) -> dict[str, Any]:
    """An RFC 9457 problem body with the given status (and type slug); returns the body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith(PROBLEM_BASE), body
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    if slug is not None:
        assert body["type"] == PROBLEM_BASE + slug, body
    return body


Call = Callable[[httpx.Client], httpx.Response]

# One TLS context for every racing client: httpx builds a new one per client otherwise (~20 ms
# each, which alone would spread 200 clients' start over seconds). The server is plain HTTP.
_TLS = ssl.create_default_context()


def together(base_url: str, calls: Sequence[Call], timeout: float = 60.0) -> list[httpx.Response]:
    """Run every call at the same moment, each on its own client and thread.

    Each thread opens its connection first (GET /healthz), then all wait on one barrier and
    are released together, so the requests really race inside the server. Answers come back
    in the order of `calls`; a call that gets no answer within `timeout` fails the test.
    """
    barrier = threading.Barrier(len(calls))

    def run(call: Call) -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=timeout, verify=_TLS) as client:
            client.get("/healthz").raise_for_status()
            barrier.wait(timeout=timeout)
            return call(client)

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def post(path: str, body: dict[str, Any], headers: dict[str, str]) -> Call:
    """A call for `together`: POST `body` to `path`."""
    return lambda client: client.post(path, json=body, headers=headers)


def statuses(responses: Sequence[httpx.Response]) -> dict[int, int]:
    """How many responses had each status code."""
    counts: dict[int, int] = {}
    for r in responses:
        counts[r.status_code] = counts.get(r.status_code, 0) + 1
    return counts
