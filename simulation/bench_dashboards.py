"""`slotwise bench dashboards`: every dashboard query over a 10,000,000-event dataset.

The dataset is generated (seeded, `simulation/synthetic.py`) into a temporary directory and
written through the event store like any run. Each query runs with the default filters (all
runs, tenants and dates) and with a narrowed variant (one run, one tenant, two weeks), each
timed as the best of `repeats` runs on a fresh read-only connection, as the dashboards open
one (the best, because the machine is shared and the others' load is not the query's cost).
The same-run baseline is a full scan of the attempts table
(`SELECT count(*), sum(latency_ms) FROM attempts`).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from contextlib import closing
from datetime import date
from pathlib import Path


def run(events: int = 10_000_000, seed: int = 1, repeats: int = 3) -> dict[str, object]:
    """Generate the dataset, time every query, and return the benchmark's JSON fields."""
    from dashboards import queries
    from dashboards.queries import Filters
    from simulation.synthetic import TENANTS, generate, run_specs

    with tempfile.TemporaryDirectory(prefix="slotwise-bench-dashboards-") as tmp:
        data = Path(tmp)
        started = time.perf_counter()
        counts = generate(data, events, seed=seed)
        generate_s = time.perf_counter() - started
        variants = {
            "default": Filters(),
            "filtered": Filters(
                run_id=run_specs(seed)[0].run_id,
                tenant=TENANTS[0][0],
                start=date(2026, 3, 9),
                end=date(2026, 3, 22),
            ),
        }

        def timed(action: object) -> float:
            samples = []
            for _ in range(repeats):
                with closing(queries.connect(data)) as con:
                    began = time.perf_counter()
                    action(con)  # type: ignore[operator]
                    samples.append((time.perf_counter() - began) * 1000)
            return min(samples)

        timings = {
            f"{name}[{variant}]": timed(lambda con, q=query, f=filters: q(con, f))
            for variant, filters in variants.items()
            for name, query in queries.QUERIES.items()
        }
        scan_ms = timed(
            lambda con: con.execute("SELECT count(*), sum(latency_ms) FROM attempts").fetchall()
        )
    slowest = max(timings, key=timings.__getitem__)
    return {
        "bench": "dashboards",
        "events": counts["attempts"],
        "slowest_query_ms": round(timings[slowest], 1),
        "slowest_query": slowest,
        "queries": len(timings),
        "median_query_ms": round(statistics.median(timings.values()), 1),
        "scan_attempts_ms": round(scan_ms, 1),
        "generate_s": round(generate_s, 1),
    }
