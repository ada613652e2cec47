"""Locustfile: sustained mixed traffic with a flash crowd. Run by `slotwise loadtest
sustained`, never imported.

Customers browse availability, hold a slot (retrying another on a conflict, as patient as they
are), then confirm or abandon the hold; some later cancel. The number of customers follows
`Demand`, a `LoadTestShape` over the stages the orchestrator computed from the simulator's
demand model (`loadtests.run_sustained`): one business day compressed into the run, with its
flash crowd, which wants the first days of the horizon.
"""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta
from typing import Any

from locust import LoadTestShape, between, task

from loadtests.locustkit import ApiUser, call, install, kit

install(monitor=False)

_started: list[float] = []  # when the shape first ticked (epoch s)


def _stage(now: float) -> dict[str, Any] | None:
    """The stage of the plan at `now`, or None once the last one is over."""
    elapsed = now - (_started[0] if _started else now)
    for stage in kit().plan["stages"]:
        if elapsed < stage["until_s"]:
            return dict(stage)
    return None


class Demand(LoadTestShape):
    """Users per stage for this Locust process (its share of the total)."""

    def tick(self) -> tuple[int, float] | None:
        if not _started:
            _started.append(time.time() - self.get_run_time())  # type: ignore[no-untyped-call]
        stage = _stage(time.time())
        if stage is None:
            return None
        k = kit()
        users = len(range(k.process, int(stage["users"]), k.processes))
        return users, max(float(users), 1.0)


class Customer(ApiUser):
    network_timeout = 120.0
    connection_timeout = 120.0
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        k = kit()
        self.me = k.next_user()
        self.rng = random.Random(f"{k.plan['seed']}-{self.me}")
        self.headers = {"Authorization": f"Bearer {k.plan['token']}"}
        self.booked: list[str] = []
        self.confirms = 0

    def _day(self) -> datetime:
        plan = kit().plan
        stage = _stage(time.time()) or {}
        days = plan["flash_days"] if stage.get("flash") else plan["horizon_days"]
        return datetime.fromisoformat(plan["first_day"]) + timedelta(days=self.rng.randrange(days))

    def _request(
        self, name: str, method: str, path: str, **kwargs: Any
    ) -> tuple[int, dict[str, Any]]:
        return call(self, name, method, path, user_index=self.me, phase="sustained", **kwargs)

    def _browse(self) -> list[str]:
        day = self._day()
        status, body = self._request(
            "availability",
            "GET",
            f"/v1/services/{kit().plan['service_id']}/availability",
            params={"from": day.isoformat(), "to": (day + timedelta(days=1)).isoformat()},
            headers=self.headers,
        )
        return [s["start"] for s in body.get("slots", [])] if status == 200 else []

    @task(35)
    def browse(self) -> None:
        self._browse()

    @task(65)
    def book(self) -> None:
        plan = kit().plan
        behaviour = plan["behaviour"]
        starts = self._browse()
        for _ in range(1 + self.rng.choice(behaviour["patience"])):
            if not starts:
                return
            start = starts.pop(self.rng.randrange(min(len(starts), 8)))  # near the preferred
            status, hold = self._request(
                "hold",
                "POST",
                "/v1/holds",
                json={"service_id": plan["service_id"], "start": start},
                headers=self.headers,
            )
            if status == 201:
                break
        else:
            return
        if status != 201:
            return
        time.sleep(self.rng.uniform(*behaviour["think_s"]))
        if self.rng.random() < behaviour["abandon"]:
            self._request("abandon", "DELETE", f"/v1/holds/{hold['id']}", headers=self.headers)
            return
        self.confirms += 1
        key = f"{plan['run_id']}-{self.me}-{self.confirms}"
        status, booking = self._request(
            "confirm",
            "POST",
            "/v1/bookings",
            json={"hold_id": hold["id"], "customer": f"customer-{self.me}"},
            headers={**self.headers, "Idempotency-Key": key},
        )
        if status == 201 and self.rng.random() < behaviour["cancel"]:
            self.booked.append(booking["id"])

    @task(5)
    def cancel(self) -> None:
        if not self.booked:
            return
        booking_id = self.booked.pop()
        self._request(
            "cancel",
            "POST",
            f"/v1/bookings/{booking_id}/cancel",
            headers={**self.headers, "Idempotency-Key": f"cancel-{booking_id}"},
            booking_id=booking_id,
        )
