"""The in-process replay: reproducible by seed, and what it books obeys the invariants,
checked here against the tables it wrote, with plain Python (no engine code)."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulation.journey import nearest
from simulation.simulate import run_engine

START = date(2027, 3, 1)


def _run(data: Path, seed: int, workers: int = 1) -> tuple[bytes, dict[str, object]]:
    result = run_engine(seed, 4, 3, start=START, data_dir=data, workers=workers)
    log = data / "parquet" / "attempts" / f"{result['run_id']}.parquet"
    return log.read_bytes(), result


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[bytes, dict[str, object], Path]]:
    out = {}
    for name, seed, workers in (("a", 11, 1), ("b", 11, 1), ("c", 12, 1), ("d", 11, 2)):
        data = tmp_path_factory.mktemp(name)
        log, result = _run(data, seed, workers)
        out[name] = (log, result, data)
    return out


def test_same_seed_same_event_log_byte_for_byte(runs: dict) -> None:
    assert runs["a"][1]["attempts"] > 1000
    assert runs["a"][0] == runs["b"][0]


def test_another_seed_another_event_log(runs: dict) -> None:
    assert runs["a"][0] != runs["c"][0]


def test_the_log_does_not_depend_on_the_number_of_workers(runs: dict) -> None:
    assert runs["a"][0] == runs["d"][0]


def _tables(data: Path, run_id: str) -> dict[str, pl.DataFrame]:
    with duckdb.connect(str(data / "slotwise.duckdb"), read_only=True) as con:
        return {
            t: con.execute(f"SELECT * FROM {t} WHERE run_id = ?", [run_id]).pl()
            for t in ("attempts", "bookings", "resources", "working", "runs")
        }


def test_no_two_active_bookings_overlap_on_a_resource(runs: dict) -> None:
    _, result, data = runs["a"]
    bookings = _tables(data, str(result["run_id"]))["bookings"].filter(pl.col("status") == "active")
    assert bookings.height > 100
    by_resource = defaultdict(list)
    for row in bookings.iter_rows(named=True):
        by_resource[row["resource_id"]].append((row["start"], row["end"]))
    for spans in by_resource.values():
        spans.sort()
        for (_, end), (start, _) in pairwise(spans):
            assert end <= start
    assert result["double_bookings"] == 0


def test_bookings_lie_in_working_time_and_respect_daily_capacity(runs: dict) -> None:
    _, result, data = runs["a"]
    t = _tables(data, str(result["run_id"]))
    working = defaultdict(list)
    for row in t["working"].iter_rows(named=True):
        working[row["resource_id"]].append((row["start"], row["end"]))
    capacity = dict(
        zip(t["resources"]["resource_id"], t["resources"]["daily_capacity"], strict=True)
    )
    per_day: Counter[tuple[str, date]] = Counter()
    for row in t["bookings"].filter(pl.col("status") == "active").iter_rows(named=True):
        rid = row["resource_id"]
        assert any(a <= row["start"] and row["end"] <= b for a, b in working[rid]), row
        per_day[rid, row["start"].astimezone(ZoneInfo(row["zone"])).date()] += 1
    for (rid, _), count in per_day.items():
        if capacity[rid] is not None:
            assert count <= capacity[rid]


def test_the_holds_funnel_is_consistent(runs: dict) -> None:
    _, result, data = runs["a"]
    attempts = _tables(data, str(result["run_id"]))["attempts"]
    assert attempts["seq"].to_list() == list(range(attempts.height))
    assert attempts["at"].is_sorted()
    held = attempts.filter((pl.col("action") == "hold") & (pl.col("outcome") == "ok"))
    assert held["hold_id"].n_unique() == held.height
    ends = attempts.filter(pl.col("action").is_in(["confirm", "abandon"]))
    # Every confirmation or abandonment ends one hold, taken before it, exactly once.
    assert ends["hold_id"].n_unique() == ends.height
    assert set(ends["hold_id"]) <= set(held["hold_id"])
    taken = dict(zip(held["hold_id"], held["at"], strict=True))
    assert all(taken[h] <= at for h, at in zip(ends["hold_id"], ends["at"], strict=True))
    confirmed = attempts.filter((pl.col("action") == "confirm") & (pl.col("outcome") == "ok"))
    assert confirmed["booking_id"].null_count() == 0
    outcomes = set(attempts["outcome"])
    assert {"ok", "no_slot", "conflict"} <= outcomes
    # Every behaviour the demand model draws shows up in the log, as its own action.
    actions = set(attempts["action"])
    assert {"availability", "hold", "confirm", "abandon", "cancel", "reschedule"} <= actions
    assert "no_show" in actions
    expired = attempts.filter((pl.col("action") == "confirm") & (pl.col("outcome") == "expired"))
    assert expired.height > 0  # customers too slow for their hold
    conflicts = attempts.filter(pl.col("outcome") == "conflict")
    assert conflicts["conflict_layer"].null_count() == 0


def test_the_run_is_recorded_with_its_summary(runs: dict) -> None:
    _, result, data = runs["a"]
    t = _tables(data, str(result["run_id"]))
    assert t["runs"].height == 1 and t["runs"]["seed"][0] == 11
    assert '"double_bookings": 0' in t["runs"]["summary"][0]
    assert t["resources"].height == t["working"]["resource_id"].n_unique()


@given(st.lists(st.integers(0, 10_000), min_size=1, unique=True), st.integers(-100, 10_100))
def test_nearest_is_the_closest_start_earliest_on_ties(starts: list[int], wish: int) -> None:
    starts.sort()
    best = min(starts, key=lambda s: (abs(s - wish), s))
    assert nearest(starts, wish) == best
