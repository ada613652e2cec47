"""`Answer`, the JSON answers the service builds itself (statuses it chooses, problems): the
ASGI messages Litestar's own `Response` sends for the same content; and an app with a route
that would add to them (which an Answer would not send) is refused when it is built."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar import Litestar, Request, Response, get, head
from litestar.exceptions import ImproperlyConfiguredException

from service.app import PROBLEM, Answer, answers_fit

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


@pytest.mark.parametrize("status", [101, 204, 304])
def test_a_status_without_a_body_is_not_an_answer(status: int) -> None:
    with pytest.raises(ValueError):
        Answer({}, status_code=status)


def test_a_hook_that_rewrites_the_start_message_changes_only_that_message() -> None:
    """`add_request_id` replaces the start message's headers; the answer keeps its own."""
    answer = Answer({"ok": True}, status_code=201)
    starts = []

    async def hooked_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message["headers"], (b"x-request-id", b"r")]
            starts.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    for _ in range(2):
        asyncio.run(answer(dict(SCOPE), receive, hooked_send))  # type: ignore[arg-type]
    assert starts[0] == starts[1]
    assert [name for name, _ in starts[1]["headers"]].count(b"x-request-id") == 1


@get("/adds", response_headers={"X-Added": "1"}, sync_to_thread=False)
def adds_a_header() -> dict[str, str]:
    return {}


@get("/heads", sync_to_thread=False)
def plain() -> dict[str, str]:
    return {}


@head("/heads", sync_to_thread=False)
def answers_head() -> None:
    return None


@pytest.mark.parametrize(
    "handlers",
    [
        [adds_a_header],
        [plain, answers_head],
    ],
)
def test_an_app_with_a_route_that_adds_to_its_answers_is_refused(handlers: list[Any]) -> None:
    with pytest.raises(ImproperlyConfiguredException):
        answers_fit(Litestar(route_handlers=handlers))
    # The same app without them is accepted, and so is one with an after-request hook refused.
    answers_fit(Litestar(route_handlers=[plain]))
    with pytest.raises(ImproperlyConfiguredException):
        answers_fit(Litestar(route_handlers=[plain], after_request=lambda response: response))
