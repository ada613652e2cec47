"""Expected failures of the booking service, each with its HTTP status and a stable type.

They are values until the edge: `service.app` turns every one into an RFC 9457
`application/problem+json` response in exactly one place.
"""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "https://slotwise.dev/problems/"


class ServiceError(Exception):
    """Base of every expected failure; `slug` becomes the problem `type`."""

    status = 400
    slug = "bad-request"
    title = "Bad request"
    # Seconds a client should wait before trying the same request again, sent as the
    # Retry-After header; None where trying again would not help.
    retry_after_s: int | None = None

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def problem(self) -> dict[str, Any]:
        return {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }


class InvalidInput(ServiceError, ValueError):
    status, slug, title = 422, "invalid-input", "Invalid input"


class Unauthorized(ServiceError, PermissionError):
    status, slug, title = 401, "unauthorized", "Missing or invalid API key"


class Forbidden(ServiceError, PermissionError):
    status, slug, title = 403, "forbidden", "The API key lacks the scope for this action"


class NotFound(ServiceError, LookupError):
    status, slug, title = 404, "not-found", "Not found"


class SlotConflict(ServiceError):
    """The time is taken on a resource (by a booking, a live hold, or busy time)."""

    status, slug, title = 409, "slot-conflict", "The slot is not available"


class SlotUnavailable(ServiceError):
    """The start is not bookable for a reason other than a conflict (hours, rules, skills)."""

    status, slug, title = 422, "slot-unavailable", "The slot cannot be booked"


class CapacityExceeded(ServiceError):
    status, slug, title = 409, "capacity-exceeded", "Daily capacity reached"


class HoldExpired(ServiceError):
    status, slug, title = 410, "hold-expired", "The hold has expired"


class RuleViolation(ServiceError):
    """A business rule refuses the action (cut-off, lead time, blackout...)."""

    status, slug, title = 422, "rule-violation", "A business rule forbids this"


class IdempotencyMismatch(ServiceError):
    status, slug, title = (
        422,
        "idempotency-key-reused",
        "Idempotency-Key reused with another request",
    )


class IdempotencyInFlight(ServiceError):
    status, slug, title = 409, "idempotency-in-flight", "A request with this key is in progress"
    retry_after_s = 1


class Unavailable(ServiceError):
    """A dependency the request cannot do without is down (PostgreSQL: fail closed)."""

    status, slug, title = 503, "unavailable", "Service temporarily unavailable"
    retry_after_s = 1
