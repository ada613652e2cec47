"""Engine errors. Each narrows a built-in so callers can catch broadly or precisely."""


class UnknownZone(ValueError):
    """The name is not an IANA time zone known to the tz database."""

    def __init__(self, zone: str) -> None:
        super().__init__(f"unknown IANA time zone {zone!r}")
        self.zone = zone


class NonexistentLocalTime(ValueError):
    """A local wall time that falls in a DST gap, refused under the RAISE policy."""


class AmbiguousLocalTime(ValueError):
    """A local wall time that occurs twice (DST fold), refused under the RAISE policy."""


class InvalidInterval(ValueError):
    """An interval whose end is not after its start, or whose bounds are not UTC-aware."""


class InvalidRecurrence(ValueError):
    """A malformed or unsupported RFC 5545 recurrence rule."""


class InvalidModel(ValueError):
    """A service, resource or rule set that contradicts itself (negative duration, count 0...)."""
