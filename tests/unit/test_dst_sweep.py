"""The DST sweep: the engine passes it, and its checker fails a wrong expansion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulation import dst
from simulation.dst import Instance, Probe, engine_expand, expected_instant, history, sweep_zone

ZONES = (
    "America/New_York",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Pacific/Apia",
    "America/Santiago",
    "Europe/London",
)


@pytest.mark.parametrize("zone", ZONES)
def test_the_engine_passes_the_sweep(zone: str) -> None:
    result = sweep_zone(zone, 2008, 2013)
    assert result.transitions and result.instances > 100
    assert result.anomalies == []


def test_zones_without_dst_have_no_transitions() -> None:
    assert sweep_zone("America/Phoenix", 2000, 2037).transitions == []


def _utc(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp())


def test_history_finds_known_transitions() -> None:
    ny = history("America/New_York", _utc(2021, 1, 1), _utc(2022, 1, 1)).transitions
    assert [(t.at, t.after - t.before, t.kind) for t in ny] == [
        (_utc(2021, 3, 14, 7), 3600, "gap"),
        (_utc(2021, 11, 7, 6), -3600, "fold"),
    ]
    lord_howe = history("Australia/Lord_Howe", _utc(2021, 1, 1), _utc(2022, 1, 1)).transitions
    assert {abs(t.after - t.before) for t in lord_howe} == {1800}
    apia = history("Pacific/Apia", _utc(2011, 12, 1), _utc(2012, 1, 1)).transitions
    assert [(t.at, t.after - t.before) for t in apia] == [(_utc(2011, 12, 30, 10), 86_400)]


# The reference against a brute-force scan of every minute: the earliest UTC minute whose local
# wall time is the given one; none means a gap, read with the offset before it (RFC 5545).
@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(ZONES),
    st.integers(2009, 2012),
    st.integers(0, 365 * 24 * 4),
)
def test_the_reference_reads_wall_times_like_a_brute_force_scan(
    zone: str, year: int, quarter: int
) -> None:
    tz = ZoneInfo(zone)
    h = history(zone, _utc(year - 1, 12, 1), _utc(year + 1, 2, 1))
    # Bias half the examples onto transition days, where it matters.
    if quarter % 2 and h.transitions:
        tr = h.transitions[quarter % len(h.transitions)]
        local = datetime.fromtimestamp(tr.at + tr.before, UTC).replace(tzinfo=None)
        local += timedelta(minutes=15 * (quarter % 9) - 60)
    else:
        local = datetime(year, 1, 1) + timedelta(minutes=15 * (quarter // 2))
    naive_utc = int(local.replace(tzinfo=UTC).timestamp())
    hits = [
        u
        for u in range(naive_utc - 15 * 3600, naive_utc + 15 * 3600, 60)
        if datetime.fromtimestamp(u, tz).replace(tzinfo=None) == local
    ]
    at, gap = expected_instant(h, local)
    if hits:
        assert (at, gap) == (hits[0], False)
    else:
        before = datetime.fromtimestamp(naive_utc - 15 * 3600, tz).utcoffset()  # before the gap
        assert gap and before is not None and at == naive_utc - int(before.total_seconds())


# --- planted violations: the checker must catch each of them ------------------------------------
def _later_in_folds(probe: Probe) -> list[Instance]:
    tz = ZoneInfo(probe.zone)
    out = []
    for o in engine_expand(probe):
        start = int(o.recurrence_id.replace(tzinfo=tz, fold=1).timestamp())
        out.append(Instance(o.recurrence_id, start, start + (o.end - o.start), o.local_start))
    return out


def _drop_one(probe: Probe) -> list[Instance]:
    return engine_expand(probe)[:-1]


def _duplicate_one(probe: Probe) -> list[Instance]:
    out = engine_expand(probe)
    return [*out, out[0]]


def _wrong_duration(probe: Probe) -> list[Instance]:
    return [
        Instance(o.recurrence_id, o.start, o.end + 3600, o.local_start)
        for o in engine_expand(probe)
    ]


def _fixed_offset(probe: Probe) -> list[Instance]:
    """The classic bug: every instance at the first one's UTC offset, 24 hours apart."""
    out = engine_expand(probe)
    first = out[0].start
    return [
        Instance(
            o.recurrence_id,
            first + 86_400 * n,
            first + 86_400 * n + (o.end - o.start),
            o.local_start,
        )
        for n, o in enumerate(out)
    ]


EVERY_YEAR = ("America/New_York", "Australia/Lord_Howe", "Pacific/Chatham", "Europe/London")
PLANTED = {
    _later_in_folds: {"policy"},
    _drop_one: {"lost"},
    _duplicate_one: {"duplicated"},
    _wrong_duration: {"duration"},
    _fixed_offset: {"wall_time", "policy"},
}


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from(sorted(PLANTED, key=lambda f: f.__name__)),
    st.sampled_from(EVERY_YEAR),
    st.integers(2005, 2030),
)
def test_the_checker_catches_a_planted_violation(wrong, zone: str, year: int) -> None:
    result = sweep_zone(zone, year, year, expand=wrong)
    assert result.transitions
    found = {a.check for _, _, a in result.anomalies}
    assert found and found <= PLANTED[wrong] | {"wall_time"}
    assert found & PLANTED[wrong]


def test_the_sweep_writes_its_tables(tmp_path: Path) -> None:
    record = dst.run(
        2011, 2011, data_dir=tmp_path, names=["Pacific/Apia", "America/Phoenix", "Europe/Berlin"]
    )
    assert record["zones"] == 2 and record["violations"] == 0 and record["zones_examined"] == 3
    with duckdb.connect(str(tmp_path / "slotwise.duckdb"), read_only=True) as con:
        zones = con.execute("SELECT zone, transitions FROM dst_zones ORDER BY zone").fetchall()
        kinds = con.execute(
            "SELECT kind, count(*) FROM dst_transitions GROUP BY kind ORDER BY kind"
        ).fetchall()
        anomalies = con.execute("SELECT count(*) FROM dst_anomalies").fetchone()
    assert zones == [("Europe/Berlin", 2), ("Pacific/Apia", 3)]
    assert kinds == [("fold", 2), ("gap", 3)]
    assert anomalies == (0,)
