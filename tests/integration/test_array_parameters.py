"""`repository.pg_array`, the service's one way to pass an array of ids or lock keys:
PostgreSQL reads its text form as the array it was made from (what it refuses to send is in
tests/unit/test_array_text.py)."""

from __future__ import annotations

import psycopg
from hypothesis import given, settings
from hypothesis import strategies as st

from service.repository import pg_array
from tests.integration.conftest import Infra


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
