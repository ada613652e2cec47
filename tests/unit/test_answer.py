"""`Answer`, the JSON answers the service builds itself (statuses it chooses, problems): the
ASGI messages Litestar's own `Response` sends for the same content, and nothing a route could
add on the way is silently dropped."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar import Request, Response
from litestar.exceptions import ImproperlyConfiguredException

from service.app import PROBLEM, Answer

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
SCOPE: dict[str, Any] = {
    "type": "http",
    "method": "POST",
    "path": "/",
    "headers": [],
    "query_string": b"",
    "state": {},
}


def messages_of(app: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append({**message, "headers": list(message.get("headers", []))})

    asyncio.run(app(dict(SCOPE), receive, send))
    return sent


def litestar_messages(content: Any, **kwargs: Any) -> list[dict[str, Any]]:
    response = Response(content=content, **kwargs)
    return messages_of(response.to_asgi_response(app=None, request=Request(dict(SCOPE))))


def answer_messages(content: Any, **kwargs: Any) -> list[dict[str, Any]]:
    answer = Answer(content, **kwargs)
    return messages_of(answer.to_asgi_response(app=None, request=Request(dict(SCOPE))))


# The service's answers are JSON objects (Litestar would send a top-level string unencoded).
@given(st.dictionaries(st.text(max_size=8), JSON_VALUES), st.sampled_from([200, 201, 409]))
def test_a_json_answer_is_sent_as_litestar_sends_it(content: Any, status: int) -> None:
    assert answer_messages(content, status_code=status) == litestar_messages(
        content, status_code=status
    )


@given(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4))
def test_a_problem_with_its_own_header_is_sent_as_litestar_sends_it(extra: Any) -> None:
    problem = {"type": "https://slotwise.dev/problems/x", "status": 503, **extra}
    kwargs = {"status_code": 503, "media_type": PROBLEM, "headers": {"Retry-After": "2"}}
    assert answer_messages(problem, **kwargs) == litestar_messages(problem, **kwargs)


@pytest.mark.parametrize(
    "addition",
    [
        {"headers": {"X-Layered": "1"}},
        {"cookies": ["a cookie"]},
        {"background": lambda: None},
        {"is_head_response": True},
    ],
)
def test_what_a_route_would_add_is_refused_not_dropped(addition: dict[str, Any]) -> None:
    with pytest.raises(ImproperlyConfiguredException):
        Answer({"ok": True}).to_asgi_response(app=None, request=Request(dict(SCOPE)), **addition)
