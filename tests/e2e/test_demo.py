"""The demo over the real service (throwaway PostgreSQL + Valkey, live API), small."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import psycopg

from simulation import demo
from simulation.service_replay import Target
from tests.integration.conftest import Api, Infra

OVERLAPS = """
SELECT count(*) FROM bookings a JOIN bookings b
  ON a.resource_id = b.resource_id AND a.booking_id < b.booking_id
 AND a.start < b."end" AND b.start < a."end"
 WHERE a.run_id = ? AND b.run_id = ? AND a.status = 'active' AND b.status = 'active'
"""


def small_demo(api: Api, infra: Infra, data_dir: Path, seed: int) -> dict[str, Any]:
    """A real `slotwise demo` run, kept small (two tenants, one day), through the live API."""
    return demo.run(
        seed=seed,
        tenants=2,
        days=1,
        data_dir=data_dir,
        concurrency=8,
        target=Target(api.base_url, api.admin_key, infra.admin_url),
        quiet=True,
    )


def test_demo_writes_a_consistent_run(api: Api, infra: Infra, tmp_path: Path) -> None:
    result = small_demo(api, infra, tmp_path, seed=3)
    run_id = result["run_id"]
    assert run_id == "demo-s3-t2-d1"
    with duckdb.connect(str(tmp_path / "slotwise.duckdb"), read_only=True) as con:
        attempts = con.execute(
            "SELECT count(*), count(DISTINCT tenant), count(latency_ms) FROM attempts "
            "WHERE run_id = ? AND strategy = 'holds'",
            [run_id],
        ).fetchone()
        actions = dict(
            con.execute(
                "SELECT action || ':' || outcome, count(*) FROM attempts"
                " WHERE run_id = ? GROUP BY 1",
                [run_id],
            ).fetchall()
        )
        active = con.execute(
            "SELECT count(DISTINCT booking_id) FROM bookings"
            " WHERE run_id = ? AND status = 'active'",
            [run_id],
        ).fetchone()
        overlaps = con.execute(OVERLAPS, [run_id, run_id]).fetchone()
        working = con.execute("SELECT count(*) FROM working WHERE run_id = ?", [run_id]).fetchone()
        kind = con.execute("SELECT kind FROM runs WHERE run_id = ?", [run_id]).fetchone()
    assert attempts is not None and attempts[0] == result["attempts"] > 50 and attempts[1] == 2
    assert actions["availability:ok"] > 0 and actions["hold:ok"] > 0 and actions["confirm:ok"] > 0
    assert active is not None and active[0] > 0
    assert overlaps == (0,)
    assert working is not None and working[0] > 0
    assert kind == ("demo",)
    # What the log says was confirmed is in PostgreSQL.
    confirmed = actions["confirm:ok"] + actions.get("reschedule:ok", 0)
    with psycopg.connect(infra.admin_url) as conn:
        stored = conn.execute(
            "SELECT count(*) FROM bookings b JOIN tenants t ON t.id = b.tenant_id "
            "WHERE t.name LIKE %s",
            (f"% ({run_id} %",),
        ).fetchone()
    assert stored == (confirmed,)
    assert result["summary"]["double_bookings_postgres"] == 0
    assert result["summary"]["double_bookings"] == 0
