-- 004_feature_drift: per-feature drift (PSI) of the live feature distribution against the
-- model's training reference, one row per (equipment type, model version, feature, time).
-- The flow writes only features with PSI above a floor plus the largest one per
-- evaluation, so the table stays small:
--   SELECT ts, max(psi) FROM feature_drift WHERE equipment_type = $1 GROUP BY ts ...
-- TimescaleDB path: a hypertable (30-day chunks) with a 365-day retention policy when the
-- build has one (recorded in schema_features('feature_drift_retention')). Plain path: a
-- plain table with a BRIN index on ts; retention by
-- SELECT pm_drop_older_than('feature_drift', INTERVAL '365 days').
-- The time column is in the primary key, so both paths support INSERT ... ON CONFLICT.
-- Idempotent: safe to run again.

CREATE TABLE IF NOT EXISTS feature_drift (
    ts             timestamptz      NOT NULL,
    equipment_type text             NOT NULL,
    model_version  text             NOT NULL,
    feature        text             NOT NULL,
    psi            double precision NOT NULL,
    PRIMARY KEY (equipment_type, model_version, feature, ts)
);
-- The latest evaluations of a type, whatever the feature (dashboards, the max over time).
CREATE INDEX IF NOT EXISTS feature_drift_type_ts ON feature_drift (equipment_type, ts DESC);

DO $$
DECLARE
    tsdb boolean;
BEGIN
    SELECT enabled INTO tsdb FROM schema_features WHERE feature = 'hypertable';
    IF tsdb IS NOT TRUE THEN
        CREATE INDEX IF NOT EXISTS feature_drift_ts_brin ON feature_drift USING brin (ts);
        INSERT INTO schema_features (feature, enabled, detail)
        VALUES ('feature_drift_retention', false,
                'plain PostgreSQL: call pm_drop_older_than(''feature_drift'', ''365 days'')'
                ' on a timer')
        ON CONFLICT (feature) DO UPDATE
            SET enabled = EXCLUDED.enabled, detail = EXCLUDED.detail, updated_at = now();
        RETURN;
    END IF;

    PERFORM create_hypertable('feature_drift', 'ts',
                              chunk_time_interval => INTERVAL '30 days', if_not_exists => TRUE);
    BEGIN
        PERFORM add_retention_policy('feature_drift', INTERVAL '365 days', if_not_exists => TRUE);
        INSERT INTO schema_features (feature, enabled, detail)
        VALUES ('feature_drift_retention', true, 'policy: feature_drift 365 days')
        ON CONFLICT (feature) DO UPDATE
            SET enabled = true, detail = EXCLUDED.detail, updated_at = now();
    EXCEPTION WHEN OTHERS THEN
        INSERT INTO schema_features (feature, enabled, detail)
        VALUES ('feature_drift_retention', false,
                'call pm_drop_older_than(''feature_drift'', ''365 days''): ' || SQLERRM)
        ON CONFLICT (feature) DO UPDATE
            SET enabled = false, detail = EXCLUDED.detail, updated_at = now();
    END;
END
$$;
