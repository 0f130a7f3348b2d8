-- 002_policies: compression and retention.
--
-- TimescaleDB path: native compression after 7 days and retention policies (readings and
-- features 90 days, predictions 730 days, alerts kept). Both policies exist only in the
-- Timescale-License build; where they are missing, the failure is recorded in
-- schema_features and retention falls back to pm_drop_older_than() on a timer.
-- Plain path: no compression; retention by SELECT pm_drop_older_than('<table>', '<interval>').
-- Retention counts from now(): replays of old data are dropped at the next policy run.
-- Idempotent: policies use if_not_exists, feature rows are upserted.

DO $$
DECLARE
    tsdb boolean;
BEGIN
    SELECT enabled INTO tsdb FROM schema_features WHERE feature = 'hypertable';
    IF tsdb IS NOT TRUE THEN
        INSERT INTO schema_features (feature, enabled, detail) VALUES
            ('compression', false, 'not available without timescaledb'),
            ('retention', false,
             'plain PostgreSQL: call pm_drop_older_than(table, interval) on a timer')
        ON CONFLICT (feature) DO UPDATE
            SET enabled = EXCLUDED.enabled, detail = EXCLUDED.detail, updated_at = now();
        RETURN;
    END IF;

    BEGIN
        -- Every column of a unique index must be a segmentby or orderby column.
        EXECUTE $c$ALTER TABLE sensor_readings SET (timescaledb.compress,
            timescaledb.compress_segmentby = 'equipment_id',
            timescaledb.compress_orderby = 'ts DESC')$c$;
        EXECUTE $c$ALTER TABLE sensor_features SET (timescaledb.compress,
            timescaledb.compress_segmentby = 'equipment_id',
            timescaledb.compress_orderby = 'ts DESC, feature_set')$c$;
        EXECUTE $c$ALTER TABLE predictions SET (timescaledb.compress,
            timescaledb.compress_segmentby = 'equipment_id',
            timescaledb.compress_orderby = 'ts DESC, model_version')$c$;
        PERFORM add_compression_policy('sensor_readings', INTERVAL '7 days', if_not_exists => TRUE);
        PERFORM add_compression_policy('sensor_features', INTERVAL '7 days', if_not_exists => TRUE);
        PERFORM add_compression_policy('predictions', INTERVAL '7 days', if_not_exists => TRUE);
        INSERT INTO schema_features (feature, enabled, detail)
        VALUES ('compression', true, 'policy: chunks older than 7 days')
        ON CONFLICT (feature) DO UPDATE
            SET enabled = true, detail = EXCLUDED.detail, updated_at = now();
    EXCEPTION WHEN OTHERS THEN
        INSERT INTO schema_features (feature, enabled, detail)
        VALUES ('compression', false, SQLERRM)
        ON CONFLICT (feature) DO UPDATE
            SET enabled = false, detail = EXCLUDED.detail, updated_at = now();
    END;

    BEGIN
        PERFORM add_retention_policy('sensor_readings', INTERVAL '90 days', if_not_exists => TRUE);
        PERFORM add_retention_policy('sensor_features', INTERVAL '90 days', if_not_exists => TRUE);
        PERFORM add_retention_policy('predictions', INTERVAL '730 days', if_not_exists => TRUE);
        INSERT INTO schema_features (feature, enabled, detail)
        VALUES ('retention', true,
                'policy: readings and features 90 days, predictions 730 days, alerts kept')
        ON CONFLICT (feature) DO UPDATE
            SET enabled = true, detail = EXCLUDED.detail, updated_at = now();
    EXCEPTION WHEN OTHERS THEN
        INSERT INTO schema_features (feature, enabled, detail)
        VALUES ('retention', false, 'call pm_drop_older_than(table, interval): ' || SQLERRM)
        ON CONFLICT (feature) DO UPDATE
            SET enabled = false, detail = EXCLUDED.detail, updated_at = now();
    END;
END
$$;
