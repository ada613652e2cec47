"""The HTTP app's wiring, built in this process (no server, nothing connected): every
parameter is declared in the framework's current idiom (pytest turns any deprecation warning
into a failure) and lands where the API documents it."""

from __future__ import annotations

from typing import Any

from litestar import Litestar

from service.app import AppConfig, authenticate, create_app


def app() -> Litestar:
    config = AppConfig(
        app_database_url="postgresql://unused",
        redis_url="redis://unused",
        admin_key="admin-" + "k" * 40,
        hold_secret=b"h" * 32,
    )
    return create_app(config)


def openapi() -> dict[str, Any]:
    schema: dict[str, Any] = app().openapi_schema.to_schema()
    return schema


def placed(operation: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["in"] for p in operation.get("parameters", [])}


def test_parameters_land_in_the_path_query_header_and_body_the_api_documents() -> None:
    paths = openapi()["paths"]
    assert placed(paths["/v1/services/{service_id}/availability"]["get"]) == {
        "service_id": "path",
        "from": "query",
        "to": "query",
        "zone": "query",
        "resource_id": "query",
    }
    hold = paths["/v1/holds"]["post"]
    assert placed(hold) == {"Idempotency-Key": "header"}
    assert list(hold["requestBody"]["content"]) == ["application/json"]
    assert placed(paths["/v1/bookings/{booking_id}/cancel"]["post"]) == {
        "booking_id": "path",
        "Idempotency-Key": "header",
    }
    # The caller and the request id come from `authenticate`, never from parameters.
    for operations in paths.values():
        for operation in operations.values():
            assert not {"caller", "request_id"} & set(placed(operation)), operation


def test_every_v1_route_and_only_those_authenticate_first() -> None:
    """`identity` reads what `authenticate` stored: a handler registered outside
    `API_ROUTES` would have no caller (and a /v1 route outside them no key check)."""
    for route in app().routes:
        for handler in route.route_handlers:
            hook = handler.resolve_before_request()
            assert (hook is authenticate) == route.path.startswith("/v1/"), route.path
