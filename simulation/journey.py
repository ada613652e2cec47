"""A customer's journey, shared by both replays (in-process engine and live service).

A journey is a chain of steps at virtual instants: look at a day's availability, hold the
start nearest the wish, then confirm or walk away; later perhaps cancel, reschedule or not
show up. What comes next depends only on the customer's pre-drawn behaviour (`demand.Customers`)
and on the answers the backend gave, so both replays walk the same decision rules.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import IntEnum

from engine.calendar import instant
from engine.timezones import to_instant, to_local
from simulation.demand import Customers

RETRY_AFTER_S = 15  # a refused customer refreshes the page after this long
NEXT_DAY_AFTER_S = 30  # ...and looks at the next day after this long


class Step(IntEnum):
    VIEW = 0  # availability of one local day
    HOLD = 1
    CONFIRM = 2
    ABANDON = 3
    CANCEL = 4
    RESCHEDULE_VIEW = 5  # availability of the day the booking moves to
    RESCHEDULE = 6
    NO_SHOW = 7
    EXPIRE = 8  # a hold's lifetime ends (engine only: the service expires holds itself)


ACTIONS: dict[int, str] = {
    Step.VIEW: "availability",
    Step.HOLD: "hold",
    Step.CONFIRM: "confirm",
    Step.ABANDON: "abandon",
    Step.CANCEL: "cancel",
    Step.RESCHEDULE_VIEW: "availability",
    Step.RESCHEDULE: "reschedule",
    Step.NO_SHOW: "no_show",
}


@dataclass(slots=True)
class Booked:
    """A booking as the customer knows it."""

    booking_id: str
    start: int  # POSIX seconds
    end: int
    resource_ids: tuple[str, ...]
    active: bool = True


def nearest(starts: Sequence[int], wish: int) -> int:
    """The start closest to ``wish`` (the earlier one on a tie); ``starts`` sorted, non-empty."""
    i = bisect_left(starts, wish)
    if i == 0:
        return starts[0]
    if i == len(starts):
        return starts[-1]
    before, after = starts[i - 1], starts[i]
    return before if wish - before <= after - wish else after


def after_view(
    c: Customers, i: int, t: int, found: bool, offset: int, retries: int
) -> tuple[int, Step, int, int] | None:
    """Next step after looking at a day: hold (when something was offered and the customer
    means to book), else the next day while the customer is flexible, else nothing.
    Returns (at, step, offset, retries)."""
    if found and not c.browses[i]:
        return t + int(c.browse_s[i]), Step.HOLD, offset, retries
    if offset < int(c.flex_days[i]):
        return t + NEXT_DAY_AFTER_S, Step.VIEW, offset + 1, retries
    return None


def after_hold(
    c: Customers, i: int, t: int, held: bool, retryable: bool, offset: int, retries: int
) -> tuple[int, Step, int, int] | None:
    """Next step after a hold attempt: confirm or abandon it, or retry after a refusal."""
    if held:
        return (
            t + int(c.think_s[i]),
            Step.ABANDON if c.abandons[i] else Step.CONFIRM,
            offset,
            retries,
        )
    if retryable and retries > 0:
        return t + RETRY_AFTER_S, Step.VIEW, offset, retries - 1
    return None


def after_booking(
    c: Customers, i: int, t: int, start: int, rescheduled: bool
) -> list[tuple[int, Step]]:
    """What happens to a fresh booking: maybe a cancellation or a reschedule (never both, and a
    rescheduled booking is not moved again), and a no-show at its start."""
    steps: list[tuple[int, Step]] = []
    lead = start - t
    cancel, move = float(c.cancel_at[i]), float(c.reschedule_at[i])
    if not rescheduled and lead > 0:
        if not math.isnan(move) and (math.isnan(cancel) or move < cancel):
            steps.append((t + max(1, int(move * lead)), Step.RESCHEDULE_VIEW))
        elif not math.isnan(cancel):
            steps.append((t + max(1, int(cancel * lead)), Step.CANCEL))
    if c.no_show[i]:
        steps.append((max(start, t + 1), Step.NO_SHOW))
    return steps


def shift_days(posix: int, days: int, zone: str) -> int:
    """The same local wall time ``days`` local days later (RFC 5545 policy in a DST gap)."""
    local = to_local(instant(posix), zone) + timedelta(days=days)
    return int(to_instant(local, zone).timestamp())
