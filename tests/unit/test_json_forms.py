"""How the service writes instants and JSON documents: `iso` (every instant in an answer) and
`to_json` (every jsonb parameter), both by msgspec rather than `isoformat`/`json.dumps`."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from service.booking import iso
from service.db import to_json

OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
INSTANTS = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=OFFSETS
)


@given(INSTANTS)
def test_iso_writes_what_isoformat_wrote(instant: datetime) -> None:
    """UTC, 'Z', and microseconds only when there are some: as the API always wrote them."""
    assert iso(instant) == instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


@given(INSTANTS, st.dates(), st.uuids(), st.text(max_size=20))
def test_to_json_reads_back_as_the_values_it_was_given(
    instant: datetime, day: date, an_id: uuid.UUID, text: str
) -> None:
    """Instants as `iso` writes them (PostgreSQL reads the offset either way), dates and UUIDs
    in their canonical text, other values as JSON has them."""
    document = {"at": instant, "day": day, "id": an_id, "text": text, "n": [1, None, True]}
    assert json.loads(to_json(document)) == {
        "at": iso(instant) if instant.utcoffset() == timedelta(0) else instant.isoformat(),
        "day": day.isoformat(),
        "id": str(an_id),
        "text": text,
        "n": [1, None, True],
    }
