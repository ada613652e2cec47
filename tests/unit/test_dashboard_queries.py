"""The dashboard queries (DuckDB SQL) against independent computations: Polars over the same
Parquet files the generator wrote, and tiny hand-built cases with known answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from dashboards import queries as q
from dashboards.queries import Filters
from simulation.events import EventStore
from simulation.synthetic import TENANTS, generate

RUN = "sim-engine-3"
NARROW = Filters(run_id=RUN, tenant="aurora-salon", start=date(2026, 3, 9), end=date(2026, 3, 20))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("workbench")
    generate(directory, 12_000, seed=3, dst_anomalies=2)
    return directory


@pytest.fixture
def con(data: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = q.connect(data)
    yield connection
    connection.close()


def table(data: Path, name: str) -> pl.DataFrame:
    """The Parquet copy of a table (written beside the DuckDB file): the independent side."""
    return pl.read_parquet(data / "parquet" / name / "*.parquet")


def narrow(df: pl.DataFrame, f: Filters, time_col: str | None) -> pl.DataFrame:
    if f.run_id is not None:
        df = df.filter(pl.col("run_id") == f.run_id)
    if f.tenant is not None and "tenant" in df.columns:
        df = df.filter(pl.col("tenant") == f.tenant)
    if time_col is not None and f.start is not None and f.end is not None:
        day = pl.col(time_col).dt.date()
        df = df.filter((day >= f.start) & (day <= f.end))
    return df


def test_every_query_renders_an_empty_data_dir(tmp_path: Path) -> None:
    """No database file at all: every query answers, with nothing counted."""
    with q.connect(tmp_path) as con:
        for name, query in q.QUERIES.items():
            for f in (Filters(), NARROW):
                result = query(con, f).drop("bin", strict=False)  # the histogram's bin numbers
                numbers = result.select(pl.selectors.numeric().fill_null(0).abs().sum())
                assert all(v == 0 for v in numbers.row(0)) if numbers.width else True, name


def test_double_bookings_finds_exactly_the_planted_overlap(tmp_path: Path) -> None:
    def at(hour: int, minute: int = 0) -> datetime:
        return datetime(2026, 3, 9, hour, minute, tzinfo=UTC)

    rows = [  # (booking, resource, start, end, status)
        ("a", "r1", at(10), at(11), "active"),
        ("b", "r1", at(10, 30), at(11, 30), "active"),  # overlaps a: the one double booking
        ("c", "r1", at(11, 30), at(12), "active"),  # touches b: not an overlap
        ("d", "r1", at(10), at(12), "cancelled"),  # cancelled: never counts
        ("e", "r2", at(10), at(11), "active"),  # another resource
    ]
    bookings = pl.DataFrame(
        [
            {"run_id": "t", "tenant": "x", "booking_id": b, "resource_id": r, "zone": "UTC"}
            | {"start": s, "end": e, "status": st}
            for b, r, s, e, st in rows
        ]
    )
    EventStore(tmp_path).write("t", {"bookings": bookings})
    with q.connect(tmp_path) as con:
        found = q.double_bookings(con, Filters())
        assert found.select("resource_id", "booking_a", "booking_b").rows() == [("r1", "a", "b")]
        assert q.double_bookings(con, Filters(tenant="y")).is_empty()


def test_generated_data_has_no_double_booking(con: duckdb.DuckDBPyConnection) -> None:
    assert q.double_bookings(con, Filters()).is_empty()


def test_utilization_by_resource_matches_polars(data: Path, con: duckdb.DuckDBPyConnection) -> None:
    for f in (Filters(), NARROW):
        minutes = (pl.col("end") - pl.col("start")).dt.total_seconds() / 60
        available = (
            narrow(table(data, "working"), f, "start")
            .group_by("resource_id")
            .agg(minutes.sum().alias("available_min"))
        )
        booked = (
            narrow(table(data, "bookings"), f, "start")
            .filter(pl.col("status") == "active")
            .group_by("resource_id")
            .agg(minutes.sum().alias("booked_min"), pl.len().alias("bookings"))
        )
        expected = (
            narrow(table(data, "resources"), f, None)
            .select("resource_id")
            .unique()
            .join(available, on="resource_id", how="left")
            .join(booked, on="resource_id", how="left")
            .fill_null(0)
            .sort("resource_id")
        )
        got = q.utilization_by_resource(con, f).sort("resource_id")
        assert_frame_equal(
            got.select("resource_id", "available_min", "booked_min", "bookings"),
            expected.select(
                "resource_id",
                pl.col("available_min").cast(pl.Float64),
                pl.col("booked_min").cast(pl.Float64),
                pl.col("bookings").cast(pl.Int64),
            ),
        )
        idle = set(q.idle_resources(con, f)["resource_id"])
        assert idle == set(
            got.filter((pl.col("available_min") > 0) & (pl.col("bookings") == 0))["resource_id"]
        )
        by_tenant = q.utilization_by_tenant(con, f)
        assert by_tenant["booked_min"].sum() == pytest.approx(expected["booked_min"].sum())


def test_heatmap_is_in_local_time_and_keeps_every_minute(
    data: Path, con: duckdb.DuckDBPyConnection
) -> None:
    heat = q.utilization_heatmap(con, Filters())
    working = table(data, "working")
    minutes = ((pl.col("end") - pl.col("start")).dt.total_seconds() / 60).sum()
    assert heat["available_min"].sum() == pytest.approx(working.select(minutes).item())
    active = table(data, "bookings").filter(pl.col("status") == "active")
    assert heat["booked_min"].sum() == pytest.approx(active.select(minutes).item())
    # Everyone works 09:00-17:00 local on weekdays, whatever the zone's offset or DST.
    assert set(heat["hour"]) == set(range(9, 17))
    assert set(heat["dow"]) == {1, 2, 3, 4, 5}


def test_heatmap_hand_case_across_a_dst_change(tmp_path: Path) -> None:
    """New York's 09:00 is 14:00 UTC before 8 March 2026 and 13:00 UTC after; Chatham's
    offset is +13:45 (a booking at 20:15 UTC is 10:00 the next local day)."""
    working = pl.DataFrame(
        {
            "run_id": ["h"] * 3,
            "tenant": ["ny", "ny", "ch"],
            "resource_id": ["n1", "n1", "c1"],
            "zone": ["America/New_York", "America/New_York", "Pacific/Chatham"],
            "start": [
                datetime(2026, 3, 6, 14, tzinfo=UTC),  # Fri 09:00 EST
                datetime(2026, 3, 9, 13, tzinfo=UTC),  # Mon 09:00 EDT
                datetime(2026, 3, 10, 20, 15, tzinfo=UTC),  # Wed 10:00 local
            ],
            "end": [
                datetime(2026, 3, 6, 15, tzinfo=UTC),
                datetime(2026, 3, 9, 14, tzinfo=UTC),
                datetime(2026, 3, 10, 20, 45, tzinfo=UTC),
            ],
        }
    )
    EventStore(tmp_path).write("h", {"working": working})
    with q.connect(tmp_path) as con:
        heat = q.utilization_heatmap(con, Filters())
    assert heat.select("day", "hour", "available_min").rows() == [
        ("Mon", 9, 60.0),
        ("Wed", 10, 30.0),
        ("Fri", 9, 60.0),
    ]


def test_daily_capacity_matches_polars(data: Path, con: duckdb.DuckDBPyConnection) -> None:
    staff = table(data, "resources").filter(
        (pl.col("kind") == "staff") & pl.col("daily_capacity").is_not_null()
    )
    parts = []
    for _, zone in TENANTS:
        parts.append(
            table(data, "bookings")
            .filter((pl.col("status") == "active") & (pl.col("zone") == zone))
            .with_columns(day=pl.col("start").dt.convert_time_zone(zone).dt.date())
        )
    used = (
        pl.concat(parts)
        .join(staff.select("run_id", "resource_id", "daily_capacity"), on=["run_id", "resource_id"])
        .group_by("run_id", "resource_id", "day", "daily_capacity")
        .len("used")
    )
    expected = (
        used.group_by("resource_id")
        .agg(
            pl.col("used").max().alias("max_used"),
            pl.len().alias("days_booked"),
            (pl.col("used") >= pl.col("daily_capacity")).sum().alias("days_at_capacity"),
        )
        .sort("resource_id")
    )
    got = q.daily_capacity(con, Filters()).sort("resource_id")
    assert_frame_equal(
        got.select("resource_id", "max_used", "days_booked", "days_at_capacity"),
        expected.select(
            "resource_id",
            pl.col("max_used").cast(pl.Int64),
            pl.col("days_booked").cast(pl.Int64),
            pl.col("days_at_capacity").cast(pl.Int64),
        ),
    )
    assert got["days_over_capacity"].sum() == 0  # the generator respects capacities
    fill = q.capacity_fill(con, Filters())
    assert fill["staff_days"].sum() == used.height


def test_conflict_counts_match_polars(data: Path, con: duckdb.DuckDBPyConnection) -> None:
    for f in (Filters(), NARROW):
        attempts = narrow(table(data, "attempts"), f, "at")
        conflicts = attempts.filter(pl.col("outcome") == "conflict")
        summary = q.conflict_summary(con, f).row(0, named=True)
        assert summary["hold_collisions"] == conflicts.filter(pl.col("action") == "hold").height
        assert (
            summary["confirmation_conflicts"]
            == conflicts.filter(pl.col("action") == "confirm").height
        )
        layers = q.conflicts_by_layer(con, f)
        expected = conflicts.group_by("tenant", "conflict_layer").len("conflicts")
        assert sorted(layers.rows()) == sorted(expected.rows())
        spots = q.conflict_hotspots(con, f, limit=5)
        top = (
            conflicts.group_by("tenant", "slot_start")
            .len("conflicts")
            .sort("conflicts", descending=True)
            .head(5)
        )
        assert spots["conflicts"].to_list() == top["conflicts"].to_list()
        assert (
            spots["conflicts"].sum()
            == spots.select(pl.col("hold") + pl.col("lock") + pl.col("constraint")).sum().item()
        )


def test_hold_funnel_matches_polars(data: Path, con: duckdb.DuckDBPyConnection) -> None:
    attempts = table(data, "attempts").filter(pl.col("hold_id").is_not_null())
    holds = attempts.filter((pl.col("action") == "hold") & (pl.col("outcome") == "ok"))
    ok_confirm = attempts.filter((pl.col("action") == "confirm") & (pl.col("outcome") == "ok"))
    abandoned = attempts.filter((pl.col("action") == "abandon") & (pl.col("outcome") == "ok"))
    refused = attempts.filter(
        (pl.col("action") == "confirm") & ~pl.col("outcome").is_in(["ok", "expired"])
    )
    key = ["run_id", "hold_id"]

    def fate(row: dict[str, object], sets: dict[str, set[tuple[object, object]]]) -> str:
        k = (row["run_id"], row["hold_id"])
        return next((name for name, ids in sets.items() if k in ids), "expired")

    sets = {
        name: set(df.select(key).iter_rows())
        for name, df in (("confirmed", ok_confirm), ("abandoned", abandoned), ("refused", refused))
    }
    expected: dict[tuple[object, str], int] = {}
    for row in holds.iter_rows(named=True):
        k2 = (row["tenant"], fate(row, sets))
        expected[k2] = expected.get(k2, 0) + 1
    got = {(t, fate_): n for t, fate_, n in q.hold_funnel(con, Filters()).rows()}
    assert got == expected
    assert {"confirmed", "abandoned", "refused", "expired"} == {f for _, f in got}

    waits = (
        holds.join(ok_confirm, on=key, suffix="_c")
        .select(((pl.col("at_c") - pl.col("at")).dt.total_microseconds() / 1e6).alias("s"))
        .get_column("s")
    )
    stats = q.time_to_confirm(con, Filters()).row(0, named=True)
    assert stats["confirmed"] == waits.len()
    assert stats["p50_s"] == pytest.approx(waits.quantile(0.5, "linear"))
    histogram = q.time_to_confirm_histogram(con, Filters())
    assert histogram["holds"].sum() == waits.len()
    assert histogram.filter(pl.col("label") == "< 10 s")["holds"].item() == (waits < 10).sum()


def test_load_test_queries_match_polars(data: Path, con: duckdb.DuckDBPyConnection) -> None:
    requests = table(data, "requests")
    summary = q.load_summary(con, Filters()).sort("strategy", "name")
    expected = (
        requests.group_by("strategy", "name")
        .agg(pl.len().alias("requests"), pl.col("latency_ms").quantile(0.5, "linear").alias("p50"))
        .sort("strategy", "name")
    )
    assert summary["requests"].to_list() == expected["requests"].to_list()
    assert summary["p50_ms"].to_list() == pytest.approx(expected["p50"].to_list())
    over_time = q.latency_over_time(con, Filters(), points=50)
    width = max(1.0, float(-(-requests["t_s"].max() // 50)))
    assert (over_time["requests_per_s"] * width).sum() == pytest.approx(requests.height)
    assert (
        q.request_errors(con, Filters())["requests"].sum()
        == requests.filter(
            (pl.col("outcome") == "error") | (pl.col("status") == 0) | (pl.col("status") >= 500)
        ).height
    )
    study = q.contention(con, Filters())
    assert_frame_equal(study, table(data, "contention").sort("run_id", "strategy"))
    assert q.contention(con, Filters(run_id=RUN)).is_empty()


def test_dst_queries(data: Path, con: duckdb.DuckDBPyConnection) -> None:
    summary = q.dst_summary(con, Filters()).row(0, named=True)
    assert summary["anomalies"] == 2 == q.dst_anomalies(con, Filters()).height
    assert summary["zones"] == len({zone for _, zone in TENANTS})
    transitions = q.dst_transitions(con, Filters())
    assert summary["transitions"] == transitions.height
    new_york = transitions.filter(pl.col("zone") == "America/New_York").row(0, named=True)
    assert (new_york["local_before"], new_york["local_after"]) == (
        "2026-03-08 02:00",
        "2026-03-08 03:00",
    )


def test_filters_narrow_overview(data: Path, con: duckdb.DuckDBPyConnection) -> None:
    attempts = narrow(table(data, "attempts"), NARROW, "at")
    head = q.overview(con, NARROW).row(0, named=True)
    assert head["attempts"] == attempts.height > 0
    assert head["tenants"] == 1
    assert q.tenants(con, Filters(run_id=RUN))["tenant"].to_list() == sorted(t for t, _ in TENANTS)


def test_generator_is_reproducible_and_consistent(tmp_path: Path) -> None:
    for name in ("a", "b"):
        generate(tmp_path / name, 3_000, seed=11)
    for name in ("attempts", "bookings", "working", "requests"):
        assert_frame_equal(table(tmp_path / "a", name), table(tmp_path / "b", name))
    attempts = table(tmp_path / "a", "attempts")
    bookings = table(tmp_path / "a", "bookings")
    confirmed = attempts.filter((pl.col("action") == "confirm") & (pl.col("outcome") == "ok"))
    assert set(confirmed["booking_id"]) == set(bookings["booking_id"])
    # Every booking lies inside its resource's working time.
    inside = bookings.join(table(tmp_path / "a", "working"), on=["run_id", "resource_id"]).filter(
        (pl.col("start") >= pl.col("start_right")) & (pl.col("end") <= pl.col("end_right"))
    )
    assert inside.height == bookings.height


def test_a_file_of_an_older_schema_takes_new_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    """A workbench file written before `contention` had `db_collisions` and `lock_wait_s`."""
    store = EventStore(tmp_path)
    with duckdb.connect(str(store.database)) as con:
        con.execute(
            "CREATE TABLE contention (run_id VARCHAR, strategy VARCHAR, attempts BIGINT,"
            " reduction_vs_pessimistic DOUBLE)"
        )
        con.execute("INSERT INTO contention VALUES ('old', 'holds', 10, 0.5)")
    new = pl.DataFrame(
        {"run_id": ["new"], "strategy": ["holds"], "attempts": [20], "db_collisions": [3]}
    )
    store.write("new", {"contention": new})
    with duckdb.connect(str(store.database), read_only=True) as con:
        rows = con.execute(
            "SELECT run_id, attempts, db_collisions FROM contention ORDER BY run_id"
        ).fetchall()
    assert rows == [("new", 20, 3), ("old", 10, None)]


def test_verified_double_bookings_read_the_load_test_summaries(tmp_path: Path) -> None:
    """Load-test runs keep the verifier's PostgreSQL count in their summary; a contention
    study has one line per strategy. Other runs are not load tests."""
    summaries = {
        "burst-1": ("burst", {"double_bookings": 0}),
        "contention-1": ("contention", {"lines": [{"double_bookings": 0}, {"double_bookings": 2}]}),
        "demo-1": ("demo", {"double_bookings": 5}),
    }
    runs = pl.DataFrame(
        {
            "run_id": list(summaries),
            "kind": [kind for kind, _ in summaries.values()],
            "seed": [1, 1, 1],
            "started_at": [datetime(2027, 1, 4, tzinfo=UTC)] * 3,
            "params": ["{}"] * 3,
            "summary": [json.dumps(summary) for _, summary in summaries.values()],
        }
    )
    store = EventStore(tmp_path)
    for run_id in summaries:
        store.write(run_id, {"runs": runs.filter(pl.col("run_id") == run_id)})
    with q.connect(tmp_path) as con:
        verified = q.verified_double_bookings(con, Filters())
    assert verified.select("run_id", "double_bookings").rows() == [
        ("burst-1", 0),
        ("contention-1", 2),
    ]
