"""The hold store's Valkey client, without a server: RESP framing and URL parsing.

The reply parser is checked against an independent encoder of the RESP2 grammar over random
reply trees: a whole reply parses to itself, every proper prefix of it is incomplete (replies
arrive in arbitrary TCP chunks), and replies sent back to back parse one after another."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.valkey import Address, ValkeyReplyError, encode, parse


def resp(value: Any) -> bytes:
    """The reference: RESP2 for a reply tree."""
    match value:
        case None:
            return b"$-1\r\n"
        case int():
            return b":%d\r\n" % value
        case bytes():
            return b"$%d\r\n%s\r\n" % (len(value), value)
        case ("status", str() as text):
            return b"+%s\r\n" % text.encode()
        case ("error", str() as text):
            return b"-%s\r\n" % text.encode()
        case list():
            return b"*%d\r\n" % len(value) + b"".join(resp(v) for v in value)
    raise AssertionError(value)


def expected(value: Any) -> Any:
    """What `parse` gives for a reply tree (statuses as bytes, errors as exceptions' text)."""
    match value:
        case ("status", str() as text):
            return text.encode()
        case ("error", str() as text):
            return ("error", text)
        case list():
            return [expected(v) for v in value]
    return value


def comparable(parsed: Any) -> Any:
    if isinstance(parsed, ValkeyReplyError):
        return ("error", str(parsed))
    if isinstance(parsed, list):
        return [comparable(v) for v in parsed]
    return parsed


line_text = st.text(st.characters(blacklist_characters="\r\n", codec="utf-8"), max_size=12)
replies = st.recursive(
    st.none()
    | st.integers(-(2**63), 2**63 - 1)
    | st.binary(max_size=20)  # binary: may hold "\r\n", which only the length delimits
    | st.tuples(st.just("status"), line_text)
    | st.tuples(st.just("error"), line_text),
    lambda children: st.lists(children, max_size=5),
    max_leaves=20,
)


@given(replies)
def test_a_reply_parses_to_itself_and_no_prefix_of_it_is_complete(value: Any) -> None:
    data = resp(value)
    parsed = parse(data, 0)
    assert parsed is not None
    assert comparable(parsed[0]) == expected(value)
    assert parsed[1] == len(data)
    for cut in range(len(data)):
        assert parse(data[:cut], 0) is None, cut


@given(st.lists(replies, min_size=1, max_size=5))
def test_replies_back_to_back_parse_in_order(values: list[Any]) -> None:
    data = bytearray(b"".join(resp(v) for v in values))
    pos, out = 0, []
    while pos < len(data):
        parsed = parse(data, pos)
        assert parsed is not None
        out.append(comparable(parsed[0]))
        pos = parsed[1]
    assert out == [expected(v) for v in values]


@given(st.lists(st.binary(max_size=20) | st.integers() | line_text, min_size=1, max_size=6))
def test_a_command_is_an_array_of_bulk_strings(args: list[bytes | int | str]) -> None:
    data = encode(args)
    assert parse(data, 0) == (
        [a if isinstance(a, bytes) else str(a).encode() for a in args],
        len(data),
    )


def test_an_unknown_reply_type_is_refused_not_guessed() -> None:
    with pytest.raises(Exception, match="unexpected reply type"):
        parse(b"%1\r\n", 0)


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://:pw@127.0.0.1:16379/0", Address("127.0.0.1", 16379, None, False, None, "pw", 0)),
        ("redis://localhost", Address("localhost", 6379, None, False, None, None, 0)),
        ("rediss://u:p%40ss@h:1/3", Address("h", 1, None, True, "u", "p@ss", 3)),
        ("redis://h:1?db=2", Address("h", 1, None, False, None, None, 2)),
        (
            "unix:///run/valkey.sock?db=5",
            Address("", 6379, "/run/valkey.sock", False, None, None, 5),
        ),
    ],
)
def test_urls(url: str, address: Address) -> None:
    assert Address.parse(url) == address


def test_a_url_of_another_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="not a redis"):
        Address.parse("http://localhost:6379")


@pytest.mark.parametrize("url", ["redis://h:1/zz", "redis://h:1?db=-1", "unix:///s?db=x"])
def test_a_database_that_is_no_number_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="database number must be a whole number"):
        Address.parse(url)
