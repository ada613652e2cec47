"""Plumbing shared by the locustfiles. Imported only inside Locust processes (it uses gevent).

The orchestrator (`loadtests.runner`) and the Locust processes it starts talk through files in
one run folder, named by `SLOTWISE_LOADTEST_DIR`:

- `plan.json`: written first by the orchestrator: per-user targets and credentials;
- `state-<i>.json`: the barriers every user of Locust process i has arrived at;
- `go-<barrier>.json`: the wall-clock instant a barrier opens, written once every user of every
  process has arrived (so 10,000 users across processes are released together);
- `rows-<i>.jsonl`: one JSON line per request a user of process i made.

Process i of n runs users `i, i + n, i + 2n, ...` (`SLOTWISE_LOADTEST_PROCESS`,
`SLOTWISE_LOADTEST_PROCESSES`), so every user has one global index whatever the split.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import gevent
from gevent import monkey
from gevent.event import Event
from geventhttpclient.connectionpool import ConnectionPool
from locust import events
from locust.contrib.fasthttp import FastHttpUser
from locust.env import Environment
from locust.user.task import LOCUST_STATE_STOPPING, LOCUST_STATE_WAITING

POLL_S = 0.005  # how often a process looks for a barrier's release


class Kit:
    """One Locust process's view of the run: its plan, barriers, counters and row file."""

    def __init__(self, run_dir: Path, process: int, processes: int) -> None:
        self.run_dir = run_dir
        self.process = process
        self.processes = processes
        self.plan: dict[str, Any] = json.loads((run_dir / "plan.json").read_text())
        self.users = len(range(process, int(self.plan["users"]), processes))
        self.barriers: dict[str, Event] = {name: Event() for name in self.plan.get("barriers", [])}
        self.release_at: dict[str, float] = {}
        self.arrived = dict.fromkeys(self.barriers, 0)
        self.done = 0
        self._local = itertools.count()
        self._rows = (run_dir / f"rows-{process}.jsonl").open("a", buffering=1)

    def next_user(self) -> int:
        """The global index of the next user this process starts."""
        return self.process + self.processes * next(self._local)

    def wait(self, barrier: str) -> None:
        """Arrive at `barrier` and block until it opens. The last of this process's users to
        arrive reports it: the orchestrator announces the release once every process has.

        At the first barrier, that user settles the heap first (`settle_heap`), which leaves
        the collector off. Only there: at a later barrier the other process may still be in a
        measured burst, which a full collection here would take CPU from. The report is
        written once per barrier for the same reason (each write costs ~1 ms of CPU: on ext4,
        renaming over a file flushes it)."""
        self.arrived[barrier] += 1
        if self.arrived[barrier] == self.users:
            if barrier == next(iter(self.barriers)):
                settle_heap()
            self._write_state()
        self.barriers[barrier].wait()

    def record(self, row: dict[str, Any]) -> None:
        self._rows.write(json.dumps(row, separators=(",", ":")) + "\n")

    def monitor(self, environment: Environment) -> None:
        """Open barriers when the orchestrator says so; quit when every user is done."""
        while True:
            for name, event in self.barriers.items():
                go = self.run_dir / f"go-{name}.json"
                if not event.is_set() and name not in self.release_at and go.exists():
                    self.release_at[name] = float(json.loads(go.read_text())["release_at"])
                    gevent.spawn(self._open, name, event)
            if self.done >= self.users:
                self._rows.close()
                if environment.runner is not None:
                    environment.runner.quit()
                return
            gevent.sleep(POLL_S)

    def _open(self, name: str, event: Event) -> None:
        gevent.sleep(max(0.0, self.release_at[name] - time.time()))
        event.set()

    def _write_state(self) -> None:
        path = self.run_dir / f"state-{self.process}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"arrived": self.arrived, "users": self.users}))
        tmp.replace(path)  # atomic: the orchestrator never reads half a file


def settle_heap() -> None:
    """Collect once, freeze what is left, and leave the collector off for the bursts.

    Thousands of users make a big heap of long-lived objects (greenlets, sockets, their
    frames), and every full collection walked all of it: in the 8 s after a 10,000-user
    release each Locust process spent 1.5 s of CPU in 4 full and ~700 young collections —
    CPU the server under test did not get on a 2-core machine. A burst's garbage is freed by
    reference counting; what cycles the bursts leave stay until the process quits."""
    gc.collect()
    gc.freeze()
    gc.disable()


_kit: Kit | None = None
# Answers whose body is a booking the verifier must find (created).
_BOOKING_ANSWERS = frozenset({("confirm", 201), ("book", 201)})


def kit() -> Kit:
    """This process's Kit (created when Locust initialises)."""
    assert _kit is not None, "the locustfile must be run by loadtests.runner"
    return _kit


def _is_socket_alive(_pool: ConnectionPool, sock: Any) -> bool:
    """geventhttpclient's check before it reuses a kept-alive socket, with poll() for select():
    select() refuses descriptors above 1023, and the library took that refusal for a dead
    socket. With 5,000 users in a process, 4 in 5 of the connections opened before a barrier
    were closed and opened again at the release — in the middle of the measured burst."""
    if sock is None or sock.fileno() < 0:
        return False
    poller = _poll()  # the unpatched poll: with a zero timeout it never blocks
    try:
        poller.register(sock.fileno(), _POLLIN)
        return not poller.poll(0)  # readable while idle: the server closed it (or sent junk)
    except (OSError, ValueError):
        return False


_poll = monkey.get_original("select", "poll")
_POLLIN = monkey.get_original("select", "POLLIN")


def install(*, monitor: bool) -> None:
    """Create the Kit when Locust initialises; with `monitor`, also run the barrier monitor
    (which quits Locust once every user is done). Also mends the connection pool's liveness
    check (see `_is_socket_alive`)."""
    ConnectionPool._is_socket_alive = _is_socket_alive  # type: ignore[method-assign,assignment]

    @events.init.add_listener  # type: ignore[untyped-decorator]  # Locust is untyped
    def _(environment: Environment, **_kw: Any) -> None:
        global _kit
        _kit = Kit(
            Path(os.environ["SLOTWISE_LOADTEST_DIR"]),
            int(os.environ.get("SLOTWISE_LOADTEST_PROCESS", "0")),
            int(os.environ.get("SLOTWISE_LOADTEST_PROCESSES", "1")),
        )
        if monitor:
            gevent.spawn(_kit.monitor, environment)


class ApiUser(FastHttpUser):
    """A user of the booking API. Its HTTP client takes every status for an answer and keeps
    no cookies: `call` judges each answer itself, and the API sets no cookies. Otherwise each
    409 of a burst raised an exception inside the client, which first rendered the whole
    exchange as a debugging string, and every request went through a cookie jar — CPU taken
    from the server under test on a shared machine."""

    abstract = True

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        agent = self.client.client
        agent.valid_response_codes = frozenset(range(100, 600))
        agent.cookiejar = None

    def stop(self, force: bool = False) -> bool:
        """Stop a user waiting between tasks at the end of its wait, not by killing it.

        Locust kills a waiting user, but the kill lands a loop iteration later: a user whose
        wait ended meanwhile has already sent its next request, and is killed ~1 ms into it,
        after the server got it. A sustained run's cancellation then left the booking
        cancelled and no answer recorded (counted as a lost acknowledgement, in 4 of 15 runs
        as an unanswered request). Marked as stopping, the user ends where `TaskSet.wait`
        checks, after its wait. A forced stop (no stop timeout, as in the burst) kills at once.
        """
        if not force and self._state == LOCUST_STATE_WAITING:
            self._state = LOCUST_STATE_STOPPING
            return False
        return bool(super().stop(force))


def call(
    user: FastHttpUser,
    name: str,
    method: str,
    path: str,
    *,
    user_index: int,
    phase: str,
    booking_id: str | None = None,
    **kwargs: Any,
) -> tuple[int, dict[str, Any]]:
    """One request, recorded as a row; returns (status, JSON body). Status 0: no answer.

    `booking_id`: the booking the request acts on (a cancellation), recorded whatever the
    answer; else the row carries the booking a 201 created. Locust kills a user still busy at
    its stop timeout: the request it was waiting on is recorded unanswered before the kill goes
    on, for the server may have acted on it. Expected refusals (409 and other 4xx) are not
    Locust failures: the verifier judges them."""
    sent = time.time()
    started = time.perf_counter()
    body: dict[str, Any] = {}
    status, error, latency_ms = 0, None, None
    try:
        with user.client.request(method, path, name=name, catch_response=True, **kwargs) as resp:
            latency_ms = (time.perf_counter() - started) * 1000
            status = int(resp.status_code or 0)
            # Set only when the client raised (no answer): every status is an answer to ApiUser.
            error = getattr(resp, "error", None)
            if resp.content:
                try:  # from the bytes: `resp.json()` guesses a charset for problem+json, slowly
                    parsed = json.loads(resp.content)
                    body = parsed if isinstance(parsed, dict) else {"items": parsed}
                except ValueError:
                    body = {}
            if status == 0 or status >= 500:
                resp.failure(f"{status}: {error or body.get('detail')}")
            else:
                resp.success()
    except BaseException as stopped:
        if latency_ms is None:  # GreenletExit: the user was stopped waiting for the answer
            error = stopped  # status stays 0 and the body empty: no answer came
        raise
    finally:
        if latency_ms is None:
            latency_ms = (time.perf_counter() - started) * 1000
        _record(user_index, phase, name, status, sent, latency_ms, body, error, booking_id)
    return status, body


def _record(
    user_index: int,
    phase: str,
    name: str,
    status: int,
    sent: float,
    latency_ms: float,
    body: dict[str, Any],
    error: BaseException | None,
    booking_id: str | None,
) -> None:
    why = body.get("why") if status >= 400 else None
    if booking_id is None and (name, status) in _BOOKING_ANSWERS:
        booking_id = body.get("id")
    kit().record(
        {
            "user": user_index,
            "phase": phase,
            "name": name,
            "status": status,
            "at": round(sent, 6),
            "latency_ms": round(latency_ms, 3),
            "booking_id": booking_id,
            "layer": why.get("layer") if isinstance(why, dict) else None,
            "reason": why.get("reason") if isinstance(why, dict) else None,
            "problem": body.get("type", "").rsplit("/", 1)[-1] if status >= 400 else None,
            "error": repr(error)[:300] if status == 0 else None,
        }
    )
