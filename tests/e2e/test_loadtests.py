"""The load tests end to end: Locust as child processes against a live service, the verifier's
SQL against the real database, results in the event store's DuckDB file."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import psycopg

from loadtests import run_sustained, verifier
from loadtests.cli import broken
from loadtests.run_contention import ContentionParams
from loadtests.run_contention import run as contention
from loadtests.run_sustained import stages
from loadtests.runner import Target, run_locust, served, set_up, warm_up
from service.infra import Endpoints
from service.migrate import migrate
from service.server import POOL_SIZE
from tests.integration.conftest import Api, Infra

SLOTWISE = str(Path(sys.executable).parent / "slotwise")


def test_a_burst_through_locust_is_answered_and_verified(
    api: Api, infra: Infra, tmp_path: Path
) -> None:
    """300 users released together: every attempt answered, each distinct target slot booked
    exactly once (hot slots by one winner, cold slots by their only user), nothing lost."""
    env = {**os.environ, "DATABASE_URL": infra.admin_url, "SLOTWISE_ADMIN_KEY": api.admin_key}
    argv = [SLOTWISE, "loadtest", "burst", "--json", "--attempts", "300", "--hot-slots", "5"]
    argv += ["--url", api.base_url, "--data", str(tmp_path)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=True)

    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    summary = json.loads(lines[0])
    assert summary["bench"] == "burst"
    assert summary["attempts"] == summary["answered"] == 300
    assert summary["noop_answered"] == 300
    assert summary["errors"] == summary["double_bookings"] == summary["lost_acks"] == 0
    assert summary["hot_slot_violations"] == summary["unacknowledged"] == 0
    assert summary["confirmed"] + summary["conflicts"] == 300
    assert summary["wall_s"] > 0 and summary["noop_wall_s"] > 0
    with duckdb.connect(str(tmp_path / "slotwise.duckdb"), read_only=True) as con:
        (run,) = con.execute("SELECT run_id FROM runs WHERE kind = 'burst'").fetchone() or ("",)
        by_name = dict(
            con.execute(
                "SELECT name, count(*) FROM requests WHERE run_id = ? GROUP BY 1", [run]
            ).fetchall()
        )
        outcomes = dict(
            con.execute(
                "SELECT outcome, count(*) FROM attempts WHERE run_id = ? GROUP BY 1", [run]
            ).fetchall()
        )
        distinct_slots = con.execute(
            "SELECT count(DISTINCT (resource_ids[1], slot_start)) FROM attempts WHERE run_id = ?",
            [run],
        ).fetchone()
    assert by_name["connect"] == by_name["noop"] == by_name["hold"] == 300
    assert by_name["confirm"] >= summary["confirmed"]
    assert outcomes == {"ok": summary["confirmed"], "conflict": summary["conflicts"]}
    assert distinct_slots == (summary["confirmed"],)


def test_sustained_traffic_with_a_flash_crowd_is_answered_and_verified(
    api: Api, infra: Infra, tmp_path: Path
) -> None:
    """A compressed business day of customers who browse, hold, confirm, abandon and cancel,
    with the flash crowd's hours at FLASH_FACTOR times the users: every request answered, no
    error, every confirmation a booking, no overlap; the run and its requests in DuckDB."""
    shape = stages(20.0, 3)
    flash = [s["users"] for s in shape if s["flash"]]
    calm = [s["users"] for s in shape if not s["flash"]]
    assert flash and min(flash) > max(calm)  # the crowd outnumbers every ordinary hour

    env = {**os.environ, "DATABASE_URL": infra.admin_url, "SLOTWISE_ADMIN_KEY": api.admin_key}
    argv = [SLOTWISE, "loadtest", "sustained", "--json", "--duration", "20", "--base-users", "3"]
    argv += ["--url", api.base_url, "--data", str(tmp_path)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-4000:]

    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["bench"] == "sustained"
    assert summary["requests"] == summary["answered"] > 0
    assert summary["errors"] == summary["double_bookings"] == summary["lost_acks"] == 0
    assert summary["unacknowledged"] == 0
    assert summary["peak_users"] == max(flash)
    outcomes = summary["outcomes"]
    assert outcomes["availability"]["ok"] > 0
    assert outcomes["hold"]["ok"] > 0
    assert outcomes["confirm"]["ok"] == summary["confirmed"] > 0
    with duckdb.connect(str(tmp_path / "slotwise.duckdb"), read_only=True) as con:
        (run,) = con.execute("SELECT run_id FROM runs WHERE kind = 'sustained'").fetchone() or ("",)
        (stored,) = con.execute(
            "SELECT count(*) FROM requests WHERE run_id = ?", [run]
        ).fetchone() or (0,)
    assert stored == summary["requests"]


def test_the_warm_up_books_through_holds_on_every_pooled_connection(infra: Infra) -> None:
    """Before a burst, `warm_up` holds and confirms its slots on a tenant of its own, as the
    burst's users do: each booked from its hold, under an Idempotency-Key. Every PostgreSQL
    connection of a freshly started server has served the booking path by then."""
    endpoints = Endpoints(infra.admin_url, infra.app_url, infra.redis_url)
    with psycopg.connect(infra.admin_url) as conn:
        (started,) = conn.execute("SELECT now()").fetchone() or (None,)
    # Each worker looks the key up once: a lookup refreshing it could be the last statement a
    # connection ran, which would hide what that connection served before.
    with served(endpoints, workers=2, backlog=128, auth_cache_seconds=3600) as target:
        scenario = warm_up(target, bookings=64, connections=8)
        with psycopg.connect(infra.admin_url) as conn:
            booked = conn.execute(
                "SELECT b.status, b.hold_nonce IS NOT NULL, k.status, count(*) FROM bookings b"
                " LEFT JOIN idempotency_keys k ON k.tenant_id = b.tenant_id"
                "  AND k.response ->> 'id' = b.id::text"
                " WHERE b.tenant_id = %s GROUP BY 1, 2, 3",
                (scenario.tenant_id,),
            ).fetchall()
            # The server's backends (started with it), by the last statement each ran.
            last = conn.execute(
                "SELECT query FROM pg_stat_activity WHERE backend_start > %s"
                " AND backend_type = 'client backend' AND usename <> current_user",
                (started,),
            ).fetchall()
    assert booked == [("confirmed", True, 201, 64)]
    assert len(last) == 2 * (POOL_SIZE + 1)  # each worker's pool, and its audit writer's
    assert all("_window(" in q or "append_audit(" in q for (q,) in last), last


def test_the_verifier_sees_a_lost_acknowledgement(api: Api, infra: Infra) -> None:
    """A 201 the clients saw for a booking the database does not have is a lost ack; one it
    has is not; a booking nobody was told about is counted as unacknowledged."""
    target = Target(api.base_url, infra.admin_url, api.admin_key)
    scenario = set_up(target, users=2, hot_slots=1, hot_share=0.0, seed=3, staff=2)
    headers = {"Authorization": f"Bearer {scenario.token}"}
    booked = []
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        for resource_id, start in scenario.targets:
            body = {
                "service_id": scenario.service_id,
                "start": start,
                "resource_ids": [resource_id],
            }
            r = client.post("/v1/bookings", json=body, headers=headers)
            assert r.status_code == 201, r.text
            booked.append(r.json()["id"])

    honest = verifier.check_database(infra.admin_url, scenario.tenant_id, booked)
    invented = sorted(str(uuid.uuid4()) for _ in range(12))
    planted = verifier.check_database(infra.admin_url, scenario.tenant_id, [booked[0], *invented])
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        r = client.post(f"/v1/bookings/{booked[0]}/cancel", headers=headers)
        assert r.status_code == 200, r.text
    # The client asked to cancel booked[0] (whether or not the answer reached it): not lost.
    asked = verifier.check_database(infra.admin_url, scenario.tenant_id, booked, [booked[0]])
    not_asked = verifier.check_database(infra.admin_url, scenario.tenant_id, booked)

    assert honest == verifier.Checks(0, 0, 0, 0)
    assert honest.summary_examples() == {}
    assert planted.lost_acks == 12
    assert planted.unacknowledged == 1  # booked[1]: in the database, never acknowledged
    # Each named (the first ten): acknowledgements the database lacks, the booking nobody was
    # told about.
    assert planted.examples == {"lost_acks": invented[:10], "unacknowledged": [booked[1]]}
    assert planted.summary_examples() == {"examples": planted.examples}
    assert asked == verifier.Checks(0, 0, 0, 0)
    assert not_asked.lost_acks == 1
    assert not_asked.examples == {"lost_acks": [booked[0]]}


def test_the_verifier_sees_a_double_booking_and_a_doubled_hot_slot(scratch_db: str) -> None:
    """The overlap and hot-slot checks catch what they exist for. The exclusion constraint
    makes both impossible, so the planted database has it dropped first."""
    migrate(scratch_db)
    tenant, staff, other, service = (str(uuid.uuid4()) for _ in range(4))
    start = datetime(2027, 5, 3, 9, tzinfo=UTC)

    def book(conn: psycopg.Connection[Any], resource: str, at: datetime, minutes: int) -> str:
        booking = str(uuid.uuid4())
        conn.execute(
            "INSERT INTO bookings (id, tenant_id, service_id, status, starts_at, ends_at)"
            " VALUES (%s, %s, %s, 'confirmed', %s, %s)",
            (booking, tenant, service, at, at + timedelta(minutes=minutes)),
        )
        conn.execute(
            "INSERT INTO booking_resources (tenant_id, booking_id, resource_id,"
            " requirement_index, service_id, during, local_day, minutes)"
            " VALUES (%s, %s, %s, 0, %s, tstzrange(%s, %s), %s, %s)",
            (
                tenant,
                booking,
                resource,
                service,
                at,
                at + timedelta(minutes=minutes),
                at.date(),
                minutes,
            ),
        )
        return booking

    with psycopg.connect(scratch_db) as conn:
        conn.execute(
            "INSERT INTO tenants (id, name, zone) VALUES (%s, 'Planted', 'UTC')", (tenant,)
        )
        for resource in (staff, other):
            conn.execute(
                "INSERT INTO resources (id, tenant_id, kind, name, zone)"
                " VALUES (%s, %s, 'staff', 'Staff', 'UTC')",
                (resource, tenant),
            )
        conn.execute(
            "INSERT INTO services (id, tenant_id, name, duration_minutes, requirements)"
            " VALUES (%s, %s, 'Cut', 30, '[{\"kind\": \"staff\"}]')",
            (service, tenant),
        )
        clean = [book(conn, staff, start, 30), book(conn, other, start, 30)]
        conn.commit()
        honest = verifier.check_database(
            scratch_db, tenant, clean, hot=[(staff, start.isoformat())]
        )
        conn.execute("ALTER TABLE booking_resources DROP CONSTRAINT no_double_booking")
        overlapping = book(conn, staff, start + timedelta(minutes=15), 30)  # not the hot start
        doubled = book(conn, other, start, 30)  # the hot slot, a second time
        conn.commit()
    acked = [*clean, overlapping, doubled]
    at = start.isoformat().replace("+00:00", "Z")  # as the runner writes hot slots
    hot = [(staff, at), (other, at)]
    planted = verifier.check_database(scratch_db, tenant, acked, hot=hot)

    assert honest == verifier.Checks(0, 0, 0, 0)
    assert planted.double_bookings == 2  # staff: first and overlapping; other: first and doubled
    assert planted.hot_slot_violations == 1  # other's hot start, booked twice
    assert (planted.lost_acks, planted.unacknowledged) == (0, 0)
    first, second = sorted([clean[1], doubled])
    assert planted.examples == {
        "double_bookings": sorted(
            [
                f"{staff}: {min(clean[0], overlapping)} & {max(clean[0], overlapping)}",
                f"{other}: {first} & {second}",
            ]
        ),
        "hot_slot_violations": [f"{other} at {at}: 2 bookings, {first} & {second}"],
    }


def test_attempts_without_an_answer_are_counted() -> None:
    rows = [
        {"user": 0, "phase": "book", "name": "hold", "status": 201, "at": 1.0, "latency_ms": 5},
        {
            "user": 0,
            "phase": "book",
            "name": "confirm",
            "status": 201,
            "at": 1.1,
            "latency_ms": 7,
            "booking_id": "b0",
        },
        {
            "user": 1,
            "phase": "book",
            "name": "hold",
            "status": 409,
            "at": 1.0,
            "latency_ms": 3,
            "problem": "slot-conflict",
        },
        {"user": 2, "phase": "book", "name": "hold", "status": 201, "at": 1.0, "latency_ms": 3},
        {"user": 3, "phase": "book", "name": "hold", "status": 0, "at": 1.0, "latency_ms": 9},
        {"user": 4, "phase": "book", "name": "hold", "status": 201, "at": 1.0, "latency_ms": 3},
        {
            "user": 4,
            "phase": "book",
            "name": "confirm",
            "status": 409,
            "at": 1.2,
            "latency_ms": 3,
            "problem": "slot-conflict",
            "layer": "constraint",
        },
        {"user": 5, "phase": "book", "name": "hold", "status": 500, "at": 1.0, "latency_ms": 3},
    ]
    found = verifier.attempts(rows, users=7)

    assert [a.outcome for a in found] == [
        "confirmed",
        "conflict",
        "unanswered",  # held, but its confirmation never came back
        "unanswered",  # no answer to the hold
        "conflict",
        "error",
        "unanswered",  # no row at all
    ]
    assert [a.layer for a in found] == [None, "hold", None, None, "constraint", None, None]
    assert verifier.summarize(found) == {
        "attempts": 7,
        "answered": 4,
        "confirmed": 1,
        "conflicts": 2,
        "errors": 4,
    }


def test_a_cancellation_excuses_a_cancelled_booking_unless_it_was_refused() -> None:
    """The sustained verifier's "asked to cancel": answered 200, or unknown (no answer, a
    5xx). A refusal (4xx) says the booking stays: cancelled anyway, it would be lost."""
    rows = [
        {"name": "cancel", "status": status, "booking_id": f"b{status}"}
        for status in (200, 0, 503, 409, 404, 422)
    ]
    rows.append({"name": "confirm", "status": 201, "booking_id": "b-confirmed"})

    assert sorted(run_sustained._maybe_cancelled(rows)) == ["b0", "b200", "b503"]


def test_a_short_contention_study(tmp_path: Path) -> None:
    """Each strategy on its own server, same workload: all answered, never double-booked, each
    distinct slot booked once; PostgreSQL's figures present and consistent."""
    params = ContentionParams(attempts=120, hot_slots=3, seed=2, processes=1, workers=1)
    lines = contention(params, data_dir=tmp_path)

    assert [line["strategy"] for line in lines] == ["pessimistic", "holds", "constraint"]
    confirmed = {line["confirmed"] for line in lines}
    assert len(confirmed) == 1, lines  # same targets: the same slots end up booked
    for line in lines:
        assert line["answered"] == line["attempts"] == 120
        assert line["errors"] == line["double_bookings"] == line["lost_acks"] == 0
        assert line["hot_slot_violations"] == line["unacknowledged"] == 0
        assert not broken(line)
        assert line["db_transactions"] >= line["confirmed"] > 0
        assert line["transactions_per_success"] >= 1
        assert line["constraint_violations"] == line["conflicts_by_layer"]["constraint"]
        assert sum(line["conflicts_by_layer"].values()) == line["conflicts"]
    holds = lines[1]
    assert holds["conflicts_by_layer"]["hold"] > 0  # layer 1 turned racers away
    assert holds["conflicts_by_layer"]["constraint"] == 0
    with duckdb.connect(str(tmp_path / "slotwise.duckdb"), read_only=True) as con:
        rows = con.execute(
            "SELECT strategy, confirmed FROM contention ORDER BY strategy"
        ).fetchall()
    assert rows == sorted((line["strategy"], line["confirmed"]) for line in lines)


# Run in a child: importing Locust monkey-patches the process that imports it.
_KEEP_ALIVE_CHECK = """
import resource, socket
from loadtests.locustkit import install
from geventhttpclient.connectionpool import ConnectionPool

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(4096, hard)), hard))
install(monitor=False)
ballast = [socket.socket() for _ in range(1100)]  # what 5,000 users' sockets do to the fds
ours, peer = socket.socketpair()
assert ours.fileno() > 1024, ours.fileno()
idle = ConnectionPool._is_socket_alive(None, ours)
peer.close()  # the server hangs up
closed = ConnectionPool._is_socket_alive(None, ours)
print(idle, closed)
"""


def test_kept_alive_sockets_above_fd_1024_are_reused_not_reopened() -> None:
    """geventhttpclient checked a pooled socket with select(), which refuses descriptors above
    1023, and took the refusal for a dead socket: most connections opened before a barrier
    were reopened at its release. The mended check sees an idle socket as alive, a socket
    whose peer hung up as dead, whatever its descriptor."""
    done = subprocess.run(
        [sys.executable, "-c", _KEEP_ALIVE_CHECK], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]


def test_a_request_its_user_is_stopped_in_is_recorded_unanswered(tmp_path: Path) -> None:
    """Locust kills a user still busy at the stop timeout. The request it was waiting on is
    recorded with status 0 and the booking it named, for the server may have acted on it: a
    cancellation the client never heard back about is still one the client asked for."""
    locustfile = tmp_path / "stopped.py"
    locustfile.write_text(
        "from locust import constant, task\n"
        "from loadtests.locustkit import ApiUser, call, install\n"
        "install(monitor=False)\n"
        "class Canceller(ApiUser):\n"
        "    wait_time = constant(60)\n"
        "    network_timeout = 120.0\n"
        "    @task\n"
        "    def cancel(self):\n"
        "        call(self, 'cancel', 'POST', '/v1/bookings/b-1/cancel', user_index=0,\n"
        "             phase='sustained', booking_id='b-1')\n"
    )
    with _serving(_Silent) as base_url:
        done = run_locust(
            tmp_path / "run",
            str(locustfile),
            base_url,
            {"users": 1},
            processes=1,
            timeout_s=60,
            extra_args=["--run-time", "2s", "--stop-timeout", "1"],
        )
    assert done.exit_codes == [0], done.log[-2000:]
    assert "Not all users finished" in done.log
    (row,) = done.rows
    assert (row["name"], row["status"], row["booking_id"]) == ("cancel", 0, "b-1")
    assert "GreenletExit" in row["error"]
    assert row["latency_ms"] >= 1000  # from the send to the kill, the 1 s of grace at least


# Run in a child process: importing Locust monkey-patches the process that imports it.
_STOP_WHILE_WAITING = """
import gevent
from gevent.pool import Group
from locust import constant, task
from locust.env import Environment
from locust.user.task import LOCUST_STATE_STOPPING, LOCUST_STATE_WAITING
from loadtests.locustkit import ApiUser

class Waiting(ApiUser):
    host = "http://127.0.0.1:9"
    wait_time = constant(0.5)
    tasks_done = 0

    @task
    def work(self):
        Waiting.tasks_done += 1

user = Waiting(Environment(user_classes=[Waiting]))
user.start(Group())
gevent.sleep(0.1)  # its first task done, it waits
assert user._state == LOCUST_STATE_WAITING, user._state
assert user.stop(force=False) is False and user._state == LOCUST_STATE_STOPPING
assert not user.greenlet.dead  # not killed: it ends when its wait does
user.greenlet.join(timeout=2)
assert user.greenlet.dead and Waiting.tasks_done == 1, Waiting.tasks_done
forced = Waiting(Environment(user_classes=[Waiting]))
forced.start(Group())
gevent.sleep(0.1)
assert forced.stop(force=True) is True and forced.greenlet.dead
print("ok")
"""


def test_a_user_stopped_while_waiting_ends_after_its_wait_not_killed() -> None:
    """Locust kills a user it finds waiting between tasks, but the kill lands a loop
    iteration later: a user whose wait ended meanwhile was killed ~1 ms into its next
    request, after the server got it. A graceful stop now lets the wait end and the user
    stop there, without starting another task; a forced stop still kills at once."""
    done = subprocess.run(
        [sys.executable, "-c", _STOP_WHILE_WAITING],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


@contextlib.contextmanager
def _serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A local HTTP server answering with `handler`, in threads, for the test's duration."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True  # a handler still sleeping must not hold the shutdown up
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


class _Silent(http.server.BaseHTTPRequestHandler):
    """A server that reads each request and never answers it."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(60)


class _Unavailable(http.server.BaseHTTPRequestHandler):
    """A server that is up but answers every booking request 503, as ours does when
    PostgreSQL is down or its pool stays busy."""

    def do_GET(self) -> None:
        self._answer(200, b'{"status": "ok"}')

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer(503, b'{"type": "https://slotwise.dev/problems/unavailable", "detail": "db"}')

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/problem+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        pass


def test_a_burst_records_server_errors_as_answers(tmp_path: Path) -> None:
    """A 5xx is an answer: each user records it and finishes, so Locust quits on its own."""
    users = 4
    plan = {
        "run_id": "errors",
        "users": users,
        "phases": ["book"],
        "barriers": ["book"],
        "token": "sw_test",
        "service_id": str(uuid.uuid4()),
        "targets": [[str(uuid.uuid4()), "2030-01-07T09:00:00Z"]] * users,
    }
    with _serving(_Unavailable) as base_url:
        done = run_locust(tmp_path, "burst.py", base_url, plan, processes=1, timeout_s=30)
    assert done.exit_codes == [0], done.log[-2000:]  # None: still running at the deadline
    holds = [row for row in done.rows if row["name"] == "hold"]
    assert sorted(row["user"] for row in holds) == list(range(users))
    assert {(row["status"], row["problem"]) for row in holds} == {(503, "unavailable")}
