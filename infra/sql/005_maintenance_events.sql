-- 005_maintenance_events: what happened to the equipment, as labels for retraining.
-- A 'failure' ends a unit's life (its readings before it get RUL = time to that failure);
-- a 'maintenance' (preventive) ends it too, but censored: those readings are not used as
-- run-to-failure examples. Few rows: a plain table on both storage paths.
-- Idempotent.

CREATE TABLE IF NOT EXISTS maintenance_events (
    equipment_id text        NOT NULL,
    ts           timestamptz NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('failure', 'maintenance')),
    note         text,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (equipment_id, ts)
);
