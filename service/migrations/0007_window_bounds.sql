-- Busy time is read by window: a resource's bookings and exceptions overlapping [lo, hi).
-- Under Row Level Security PostgreSQL searches an index with a query's condition only if the
-- condition's functions are leakproof (none may see a row before the policy has passed it), and
-- no range function is: `during && tstzrange(lo, hi)` was checked row by row, after the policy,
-- against every booking and exception the resource ever had. Each hold, each confirmation
-- (under its advisory lock) and each availability read grew with the resource's history.
-- Timestamp comparisons are leakproof, so the bounds are kept beside `during` and indexed;
-- `ends_at > lo AND starts_at < hi` is the overlap of half-open ranges.
ALTER TABLE booking_resources
    ADD COLUMN starts_at timestamptz NOT NULL GENERATED ALWAYS AS (lower(during)) STORED,
    ADD COLUMN ends_at timestamptz NOT NULL GENERATED ALWAYS AS (upper(during)) STORED,
    ADD CONSTRAINT booking_resources_half_open CHECK (lower_inc(during) AND NOT upper_inc(during));
-- From the window's start to the resource's last booking: its history before the window is
-- never read; `starts_at < hi` is checked in the index, so later bookings cost no row read.
CREATE INDEX booking_resources_window ON booking_resources (resource_id, ends_at, starts_at)
    WHERE active;

ALTER TABLE resource_exceptions
    ADD COLUMN starts_at timestamptz NOT NULL GENERATED ALWAYS AS (lower(during)) STORED,
    ADD COLUMN ends_at timestamptz NOT NULL GENERATED ALWAYS AS (upper(during)) STORED;
-- The range index served no query of the service's role (see above).
DROP INDEX resource_exceptions_during;
CREATE INDEX resource_exceptions_window ON resource_exceptions (resource_id, ends_at, starts_at);

-- Listing bookings by window searches `bookings_starts` (tenant_id, starts_at), where only
-- `starts_at < hi` bounded the scan: a list of next week began at the tenant's first booking.
-- An appointment lasts at most a day (a service's duration is at most 1440 minutes), so a
-- booking overlapping [lo, hi) started after lo - 24 hours, which bounds the scan from below.
ALTER TABLE bookings
    ADD CONSTRAINT bookings_within_a_day CHECK (ends_at - starts_at <= interval '24 hours');
