-- The waiting queue: appointments accepted without a time or a resource. Each waits, with a
-- window of acceptable starts and a priority, until a person or the CP-SAT auto-assigner books
-- it — through the same lock and constraint path as any booking.
CREATE TABLE queue_entries (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    service_id   uuid NOT NULL,
    earliest     timestamptz NOT NULL,
    latest       timestamptz NOT NULL CHECK (latest >= earliest),
    priority     integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN -1000 AND 1000),
    customer     text NOT NULL DEFAULT '',
    status       text NOT NULL DEFAULT 'waiting'
                 CHECK (status IN ('waiting', 'assigned', 'withdrawn')),
    booking_id   uuid,
    last_reason  jsonb,            -- why the last auto-assign run left it waiting
    created_at   timestamptz NOT NULL DEFAULT now(),
    assigned_at  timestamptz,
    CHECK ((status = 'assigned') = (booking_id IS NOT NULL)),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, service_id) REFERENCES services (tenant_id, id),
    FOREIGN KEY (tenant_id, booking_id) REFERENCES bookings (tenant_id, id)
);
CREATE INDEX queue_entries_waiting ON queue_entries (tenant_id, priority DESC, created_at)
    WHERE status = 'waiting';

ALTER TABLE queue_entries ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON queue_entries FOR ALL TO slotwise_app
    USING (tenant_id = app_tenant()) WITH CHECK (tenant_id = app_tenant());
