"""`repository.pg_array`, the service's one way to pass an array of ids or lock keys: PostgreSQL
reads its text form as the array it was made from, and an element that would need quoting (or
change the array's shape) is refused before anything is sent."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.repository import pg_array
from tests.integration.conftest import Infra

AN_ID = "0b0e7c2a-8d7e-4c1e-9a55-3a3c2a1b0c11"


@settings(max_examples=50, deadline=None)
@given(
    ids=st.lists(st.uuids().map(str), max_size=5),
    keys=st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=5),
)
def test_postgresql_reads_the_arrays_it_was_given(
    infra: Infra, ids: list[str], keys: list[int]
) -> None:
    with psycopg.connect(infra.admin_url) as conn:
        row = conn.execute(
            "SELECT %s::uuid[], %s::bigint[]", (pg_array(ids), pg_array(keys))
        ).fetchone()
    assert row is not None
    assert [str(u) for u in row[0]] == ids
    assert row[1] == keys


@pytest.mark.parametrize("element", ['a"b', "a}", "a,b", "", "NULL", "1 2", "{1}", "a\\b"])
def test_an_element_that_would_need_quoting_is_refused(element: str) -> None:
    with pytest.raises(ValueError, match="not UUIDs or integers"):
        pg_array([AN_ID, element])
