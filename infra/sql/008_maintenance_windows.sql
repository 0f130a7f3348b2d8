-- 008_maintenance_windows: planned work per machine. An alert of a machine whose event
-- time falls inside one of its windows [starts_at, ends_at) is still stored (alerts table)
-- but not notified: its delivery ledger entries are recorded as 'suppressed' (never sent).
-- Few rows: a plain table on both storage paths. Idempotent.

CREATE TABLE IF NOT EXISTS maintenance_windows (
    id           bigserial   PRIMARY KEY,
    equipment_id text        NOT NULL,
    starts_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL,
    reason       text        NOT NULL,
    created_by   text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at)
);
CREATE INDEX IF NOT EXISTS maintenance_windows_equipment
    ON maintenance_windows (equipment_id, ends_at);

-- the ledger learns the 'suppressed' state (same check as 006, one state more)
ALTER TABLE alert_deliveries DROP CONSTRAINT IF EXISTS alert_deliveries_state_check;
ALTER TABLE alert_deliveries ADD CONSTRAINT alert_deliveries_state_check
    CHECK (state IN ('pending', 'sending', 'failed', 'delivered', 'abandoned', 'suppressed'));
