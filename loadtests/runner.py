"""Orchestration of a load test: servers, the tenant under test, and Locust as child processes.

Locust monkey-patches the process that imports it (gevent), so this module never does: it writes
a plan, starts `python -m locust` processes on a locustfile, opens the barriers the locustfiles
wait at (see `loadtests.locustkit` for the file protocol), and reads back the rows they wrote.

Independent headless Locust processes rather than Locust's master/worker mode: the barrier and
the results travel through the run folder anyway, so a master would only relay; each process
runs a disjoint set of users (`i, i + n, ...`) and the orchestrator sums their progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from service.settings import DEFAULT_AUTH_CACHE_SECONDS

LOADTESTS = Path(__file__).resolve().parent
RELEASE_LEAD_S = 0.5  # a barrier opens this long after it is announced: every process sees it
SLOT = timedelta(minutes=30)
SLOTS_PER_DAY = 24  # 08:00-20:00 UTC in 30-minute slots


@dataclass(frozen=True, slots=True)
class Target:
    """A live service to load, and what the verifier needs to look into its database."""

    base_url: str
    admin_url: str = field(repr=False)  # superuser URL of the service's database
    admin_key: str = field(repr=False)


@contextlib.contextmanager
def infrastructure(database_url: str | None, redis_url: str | None) -> Iterator[Any]:
    """Migrated PostgreSQL + Valkey: throwaway ones unless both URLs are given."""
    from service.infra import Endpoints, throwaway
    from service.migrate import migrate
    from service.settings import app_database_url

    with contextlib.ExitStack() as stack:
        if database_url and redis_url:
            endpoints = Endpoints(
                database_url, app_database_url(database_url, secrets.token_urlsafe(24)), redis_url
            )
        else:
            endpoints = stack.enter_context(throwaway())
        migrate(endpoints.admin_url, app_url=endpoints.app_url)
        yield endpoints


@contextlib.contextmanager
def served(
    endpoints: Any,
    *,
    workers: int,
    backlog: int,
    strategy: str = "holds",
    auth_cache_seconds: float = DEFAULT_AUTH_CACHE_SECONDS,
) -> Iterator[Target]:
    """A live service (uvicorn child process) with `workers` workers on `endpoints`."""
    from service.server import ServerSecrets, running_server

    keys = ServerSecrets("loadtest-admin-" + secrets.token_hex(16), secrets.token_hex(32))
    with running_server(
        endpoints,
        keys,
        workers=workers,
        backlog=backlog,
        booking_strategy=strategy,
        auth_cache_seconds=auth_cache_seconds,
    ) as base_url:
        yield Target(base_url, endpoints.admin_url, keys.admin_key)


# --- the tenant under test -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Scenario:
    """A tenant with `staff` staff members working 08:00-20:00 UTC daily and one 30-minute
    service, plus each user's target slot: most users race for `hot_slots` slots."""

    tenant_id: str
    token: str = field(repr=False)
    service_id: str
    staff: tuple[str, ...]
    first_day: datetime
    targets: tuple[tuple[str, str], ...]  # per user: (resource id, start ISO)
    hot: tuple[tuple[str, str], ...]  # the hot slots


def first_day(now: datetime) -> datetime:
    """Midnight UTC a week from `now`: bookable, and never in the past during a run."""
    return datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=7)


def set_up(
    target: Target,
    *,
    users: int,
    hot_slots: int,
    hot_share: float,
    seed: int,
    staff: int = 40,
    now: datetime | None = None,
) -> Scenario:
    """Create the tenant over the API and draw each user's target (same seed, same draw)."""
    day0 = first_day(now or datetime.now(UTC))
    admin = {"Authorization": f"Bearer {target.admin_key}"}
    with httpx.Client(base_url=target.base_url, timeout=60) as client:
        r = client.post("/v1/tenants", json={"name": "Load test", "zone": "UTC"}, headers=admin)
        r.raise_for_status()
        body = r.json()
        token = body["api_key"]["token"]
        headers = {"Authorization": f"Bearer {token}"}
        anchor = (day0 - timedelta(days=1)).strftime("%Y-%m-%dT08:00:00")
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
                        {"starts_local": anchor, "duration_minutes": 720, "rrule": "FREQ=DAILY"}
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
        service_id = r.json()["id"]
    slots = _slots(staff_ids, day0)
    hot = [next(slots) for _ in range(hot_slots)]
    rng = random.Random(seed)
    targets = [rng.choice(hot) if rng.random() < hot_share else next(slots) for _ in range(users)]
    return Scenario(
        body["tenant"]["id"], token, service_id, tuple(staff_ids), day0, tuple(targets), tuple(hot)
    )


def warm_up(target: Target, bookings: int = 256, connections: int = 16) -> Scenario:
    """Hold and confirm `bookings` slots of a tenant of its own as a burst's users do (with an
    Idempotency-Key and a customer), `connections` at a time; returns that tenant. The users'
    connect phase has the workers serve /healthz before the no-op burst is measured; this does
    the same for the booking path. Its first use on a pooled PostgreSQL connection costs that
    backend its catalog caches, PL/pgSQL compilation and plans (~8 ms: ~0.3 s of PostgreSQL's
    CPU over two workers' pools), and a worker its own first-use costs, which a service that
    has been serving pays rarely, never all at once. A pool hands out its connections in turn
    and a booking takes three (the hold's read, its audit batch, the confirmation), so with
    connections spread over the workers every backend serves the booking path, and almost
    surely each of its statements."""
    scenario = set_up(target, users=bookings, hot_slots=0, hot_share=0.0, seed=0, staff=8)
    headers = {"Authorization": f"Bearer {scenario.token}"}

    async def book(client: httpx.AsyncClient, mine: range) -> None:
        for i in mine:
            resource_id, start = scenario.targets[i]
            body = {
                "service_id": scenario.service_id,
                "start": start,
                "resource_ids": [resource_id],
            }
            hold = await client.post("/v1/holds", json=body, headers=headers)
            hold.raise_for_status()
            booked = await client.post(
                "/v1/bookings",
                json={"hold_id": hold.json()["id"], "customer": f"warm-up-{i}"},
                headers={**headers, "Idempotency-Key": f"{scenario.tenant_id}-{i}"},
            )
            booked.raise_for_status()

    async def main() -> None:
        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(base_url=target.base_url, timeout=60, limits=limits) as client:
            await asyncio.gather(
                *(book(client, range(i, bookings, connections)) for i in range(connections))
            )

    asyncio.run(main())
    return scenario


def _slots(staff_ids: Sequence[str], day0: datetime) -> Iterator[tuple[str, str]]:
    """Distinct (staff member, start) slots: the first slot of every staff member, then the
    second..., day after day, so neighbouring targets spread over different people."""
    day = 0
    while True:
        for slot in range(SLOTS_PER_DAY):
            start = day0 + timedelta(days=day, hours=8) + slot * SLOT
            for sid in staff_ids:
                yield sid, start.isoformat().replace("+00:00", "Z")
        day += 1


# --- Locust ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LocustRun:
    """What the Locust processes wrote: their rows, and when each barrier opened."""

    rows: list[dict[str, Any]]
    releases: dict[str, float]  # barrier -> release instant (epoch seconds)
    exit_codes: list[int | None]  # None: killed at the deadline
    log: str


def run_locust(
    run_dir: Path,
    locustfile: str,
    host: str,
    plan: dict[str, Any],
    *,
    processes: int,
    timeout_s: float,
    extra_args: Sequence[str] = (),
    on_release: Callable[[str], None] | None = None,
) -> LocustRun:
    """Run `locustfile` headless in `processes` Locust processes with `plan["users"]` users.

    Each barrier of `plan["barriers"]` opens once every user has arrived at it, or after
    `timeout_s` (users still missing stay missing: the verifier counts them). `on_release` is
    called just before a barrier opens. Processes still running after `timeout_s` from the last
    release are killed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "plan.json").write_text(json.dumps(plan))
    users = int(plan["users"])
    processes = max(1, min(processes, users))
    env = {**os.environ, "SLOTWISE_LOADTEST_DIR": str(run_dir), "PYTHONPATH": str(LOADTESTS.parent)}
    logs = [(run_dir / f"locust-{i}.log").open("w") for i in range(processes)]
    children = []
    for i in range(processes):
        mine = len(range(i, users, processes))
        argv = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOADTESTS / locustfile),
            "--headless",
            "--host",
            host,
            "--users",
            str(mine),
            "--spawn-rate",
            str(mine),
            "--only-summary",
            "--exit-code-on-error",
            "0",
            *extra_args,
        ]
        child_env = {
            **env,
            "SLOTWISE_LOADTEST_PROCESS": str(i),
            "SLOTWISE_LOADTEST_PROCESSES": str(processes),
        }
        children.append(
            subprocess.Popen(
                argv,
                env=child_env,
                cwd=LOADTESTS.parent,
                stdout=logs[i],
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    releases: dict[str, float] = {}
    try:
        for barrier in plan.get("barriers", []):
            _await_arrivals(run_dir, barrier, users, children, timeout_s)
            if on_release is not None:
                on_release(barrier)
            releases[barrier] = time.time() + RELEASE_LEAD_S
            # Atomically: Locust processes poll for this file, and one that read it half
            # written would never open its barrier, leaving all its users unanswered.
            go = run_dir / f"go-{barrier}.json"
            go.with_suffix(".tmp").write_text(json.dumps({"release_at": releases[barrier]}))
            go.with_suffix(".tmp").replace(go)
        codes = _await_exit(children, timeout_s)
    finally:
        for child in children:
            _stop(child)
        for log in logs:
            log.close()
    rows = []
    for path in sorted(run_dir.glob("rows-*.jsonl")):
        with path.open() as handle:
            rows += [json.loads(line) for line in handle if line.endswith("\n")]
    log_text = "\n".join(p.read_text() for p in sorted(run_dir.glob("locust-*.log")))
    unanswered = sum(1 for row in rows if row["status"] == 0)
    if unanswered or any(code != 0 for code in codes):
        # Say why users went missing or requests unanswered; the verifier counts them.
        sys.stderr.write(
            f"Locust exit codes {codes}, {unanswered} requests unanswered; its output ends:\n"
            f"{log_text[-4000:]}\n"
        )
    return LocustRun(rows, releases, codes, log_text)


def _await_arrivals(
    run_dir: Path,
    barrier: str,
    users: int,
    children: Sequence[subprocess.Popen[bytes]],
    timeout_s: float,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        arrived = 0
        for path in run_dir.glob("state-*.json"):
            with contextlib.suppress(ValueError, OSError):
                arrived += int(json.loads(path.read_text())["arrived"].get(barrier, 0))
        if arrived >= users or all(c.poll() is not None for c in children):
            return
        time.sleep(0.02)


def _await_exit(children: Sequence[subprocess.Popen[bytes]], timeout_s: float) -> list[int | None]:
    deadline = time.monotonic() + timeout_s
    codes: list[int | None] = []
    for child in children:
        try:
            codes.append(child.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            codes.append(None)
    return codes


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(timeout=10)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def run_id(kind: str, now: datetime | None = None) -> str:
    """`<kind>-<UTC timestamp>`: a load test's timing is not reproducible, its seed is."""
    return f"{kind}-{(now or datetime.now(UTC)).strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"
