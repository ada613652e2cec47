from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InvalidInterval
from engine.intervals import Interval, IntervalIndex, intersect, merge, subtract

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def minutes(a: int, b: int) -> Interval:
    return Interval(EPOCH + timedelta(minutes=a), EPOCH + timedelta(minutes=b))


def covered(intervals: list[Interval]) -> set[int]:
    return {
        m
        for iv in intervals
        for m in range(
            int((iv.start - EPOCH) / timedelta(minutes=1)),
            int((iv.end - EPOCH) / timedelta(minutes=1)),
        )
    }


spans = st.lists(
    st.tuples(st.integers(0, 200), st.integers(1, 60)).map(lambda t: minutes(t[0], t[0] + t[1])),
    max_size=12,
)


def test_invalid_intervals_are_refused() -> None:
    with pytest.raises(InvalidInterval):
        minutes(10, 10)
    with pytest.raises(InvalidInterval):
        Interval(datetime(2024, 1, 1), datetime(2024, 1, 2))  # naive
    with pytest.raises(InvalidInterval):  # aware, but not UTC
        Interval(datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=2))), EPOCH)


@settings(max_examples=200)
@given(spans, spans)
def test_set_algebra_matches_minute_sets(a: list[Interval], b: list[Interval]) -> None:
    assert covered(merge(a)) == covered(a)
    assert covered(subtract(a, b)) == covered(a) - covered(b)
    assert covered(intersect(a, b)) == covered(a) & covered(b)
    merged = merge(a)
    assert all(x.end < y.start for x, y in pairwise(merged))


@settings(max_examples=200)
@given(spans, st.tuples(st.integers(0, 250), st.integers(1, 80)))
def test_index_overlap_matches_linear_scan(items: list[Interval], probe: tuple[int, int]) -> None:
    index: IntervalIndex[int] = IntervalIndex((iv, i) for i, iv in enumerate(items))
    query = minutes(probe[0], probe[0] + probe[1])
    expected = sorted((iv, i) for i, iv in enumerate(items) if iv.overlaps(query))
    assert sorted(index.overlapping(query)) == expected
    assert index.is_free(query) == (not expected)


def test_index_add_remove_and_half_open_bounds() -> None:
    index: IntervalIndex[str] = IntervalIndex()
    index.add(minutes(0, 30), "a")
    index.add(minutes(30, 60), "b")
    assert [p for _, p in index.overlapping(minutes(29, 31))] == ["a", "b"]
    assert index.is_free(minutes(60, 90))  # touching is not overlapping
    index.remove(minutes(0, 30), "a")
    assert [p for _, p in index] == ["b"]
    assert len(index) == 1


@settings(max_examples=200)
@given(spans, st.tuples(st.integers(0, 250), st.integers(1, 300)), st.data())
def test_sweep_spans_match_tree_queries(
    items: list[Interval], probe: tuple[int, int], data: st.DataObject
) -> None:
    index: IntervalIndex[int] = IntervalIndex((iv, i) for i, iv in enumerate(items))
    for i in data.draw(st.sets(st.integers(0, max(len(items) - 1, 0)), max_size=3)):
        if i < len(items):
            index.remove(items[i], i)
    query = minutes(probe[0], probe[0] + probe[1])
    tree = sorted((iv.start.timestamp(), iv.end.timestamp()) for iv, _ in index.overlapping(query))
    assert index.spans(query.start.timestamp(), query.end.timestamp()) == tree
