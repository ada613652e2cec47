-- The activity feed is the audit trail without its reads. It filtered them with a regular
-- expression on `action`, which under Row Level Security is checked row by row after the
-- tenant's policy (no regular expression operator is leakproof): a page walked every read
-- since its cursor, and on a tenant whose trail is mostly reads (every availability request
-- is one) each poll of the feed went through all the reads since the last change. Whether an
-- action is a read is now stored, and the other events have an index of their own.
ALTER TABLE audit_events ADD COLUMN is_read boolean NOT NULL
    GENERATED ALWAYS AS (action ~ '\.(read|list|explain|plan)$') STORED;
CREATE INDEX audit_events_activity ON audit_events (tenant_id, xact, id) WHERE NOT is_read;
