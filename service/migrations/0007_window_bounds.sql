-- Busy time is read by window: a resource's bookings and exceptions overlapping [lo, hi).
-- Under Row Level Security PostgreSQL searches an index with a query's condition only if the
-- condition's functions are leakproof (none may see a row before the policy has passed it), and
-- no range function is: `during && tstzrange(lo, hi)` was checked row by row, after the policy,
-- against every booking and exception the resource ever had. Each hold, each confirmation
-- (under its advisory lock) and each availability read grew with the resource's history.
-- Timestamp comparisons are leakproof, so the bounds are kept beside `during` and indexed;
-- `ends_at > lo AND starts_at < hi` is the overlap of half-open ranges.
--
-- A booking's footprint is its service's duration and buffers, at most 1440 + 720 + 720
-- minutes: one overlapping [lo, hi) started after lo - 48 hours, which bounds the index scan on
-- both sides (neither the resource's past nor its bookings after the window are read).
ALTER TABLE booking_resources
    ADD COLUMN starts_at timestamptz NOT NULL GENERATED ALWAYS AS (lower(during)) STORED,
    ADD COLUMN ends_at timestamptz NOT NULL GENERATED ALWAYS AS (upper(during)) STORED,
    ADD CONSTRAINT booking_resources_footprint CHECK (
        lower_inc(during) AND NOT upper_inc(during)
        AND upper(during) - lower(during) <= interval '48 hours');
CREATE INDEX booking_resources_window ON booking_resources (resource_id, starts_at, ends_at)
    WHERE active;

-- Time off has no such bound, so exceptions are searched from the window's start on (a
-- resource has few). An exception open-ended by hand (the API takes none) ends at infinity.
ALTER TABLE resource_exceptions
    ADD COLUMN starts_at timestamptz NOT NULL GENERATED ALWAYS AS (lower(during)) STORED,
    ADD COLUMN ends_at timestamptz NOT NULL
        GENERATED ALWAYS AS (coalesce(upper(during), 'infinity')) STORED;
-- The range index served no query of the service's role (see above).
DROP INDEX resource_exceptions_during;
CREATE INDEX resource_exceptions_window ON resource_exceptions (resource_id, ends_at, starts_at);

-- Listing bookings by window searches `bookings_starts` (tenant_id, starts_at), where only
-- `starts_at < hi` bounded the scan: a list of next week began at the tenant's first booking.
-- An appointment lasts at most a day (a service's duration is at most 1440 minutes), so a
-- booking overlapping [lo, hi) started after lo - 24 hours, which bounds the scan from below.
ALTER TABLE bookings
    ADD CONSTRAINT bookings_within_a_day CHECK (ends_at - starts_at <= interval '24 hours');

-- Each ALTER above holds its table exclusively while it rewrites or checks every row, and
-- `slotwise serve` migrates at start: on a large database, expect that long a pause.
