"""`repository.pg_array` refuses, before anything is sent, an element that would need quoting in
a PostgreSQL array or change its shape (that PostgreSQL reads what it does send as the array
it was made from is tests/integration/test_array_parameters.py)."""

from __future__ import annotations

import pytest

from service.repository import pg_array

AN_ID = "0b0e7c2a-8d7e-4c1e-9a55-3a3c2a1b0c11"


def test_ids_and_keys_are_written_as_postgresql_writes_arrays() -> None:
    assert pg_array([AN_ID, AN_ID.upper()]) == "{" + AN_ID + "," + AN_ID.upper() + "}"
    assert pg_array([-(2**63), 0, 2**63 - 1]) == "{-9223372036854775808,0,9223372036854775807}"
    assert pg_array([]) == "{}"


@pytest.mark.parametrize("element", ['a"b', "a}", "a,b", "", "NULL", "1 2", "{1}", "a\\b"])
def test_an_element_that_would_need_quoting_is_refused(element: str) -> None:
    with pytest.raises(ValueError, match="not UUIDs or integers"):
        pg_array([AN_ID, element])
