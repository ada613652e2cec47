"""Locustfile: the barrier burst. Run by `slotwise loadtest burst|contention`, never imported.

Each user opens its connection (GET /healthz), then for each phase of the plan waits at that
phase's barrier and, once every user of every Locust process has arrived, is released with all
the others:
- `noop`: GET /healthz again, the same burst against an endpoint that does nothing;
- `book`: POST /v1/holds for its target slot and, if held, POST /v1/bookings to confirm.
Most users' targets are a few hot slots; the rest have a slot of their own.
"""

from __future__ import annotations

import json
from typing import Any

import gevent
from locust import constant, task

from loadtests.locustkit import ApiUser, call, install, kit

install(monitor=True)

PARK_S = 3600.0  # a finished user idles until the process quits (it must not run again)


class BurstUser(ApiUser):
    # Long timeouts: in a 10,000-request burst the last answer can come tens of seconds after
    # the first; an early client timeout would count as "unanswered" for a request that was not.
    network_timeout = 600.0
    connection_timeout = 600.0
    concurrency = 1  # one connection per user, opened before the barrier and kept alive
    wait_time = constant(PARK_S)

    @task
    def attempt(self) -> None:
        k = kit()
        me = k.next_user()
        plan = k.plan
        headers = {"Authorization": f"Bearer {plan['token']}", "Content-Type": "application/json"}
        resource_id, start = plan["targets"][me]
        # Encoded before any barrier, as the connection is opened: the burst measures the
        # service, and JSON-encoding 10,000 bodies at the release took the client's CPU.
        hold_body = json.dumps(
            {"service_id": plan["service_id"], "start": start, "resource_ids": [resource_id]}
        ).encode()
        call(self, "connect", "GET", "/healthz", user_index=me, phase="connect")
        for phase in plan["phases"]:
            k.wait(phase)
            if phase == "noop":
                call(self, "noop", "GET", "/healthz", user_index=me, phase=phase)
            else:
                self.book(me, plan, headers, hold_body)
        k.done += 1
        gevent.sleep(PARK_S)

    def book(
        self, me: int, plan: dict[str, Any], headers: dict[str, str], hold_body: bytes
    ) -> None:
        status, hold = call(
            self,
            "hold",
            "POST",
            "/v1/holds",
            user_index=me,
            phase="book",
            data=hold_body,
            headers=headers,
        )
        if status != 201:
            return
        call(
            self,
            "confirm",
            "POST",
            "/v1/bookings",
            user_index=me,
            phase="book",
            json={"hold_id": hold["id"], "customer": f"user-{me}"},
            headers={**headers, "Idempotency-Key": f"{plan['run_id']}-{me}"},
        )
