-- 003_health_hourly: hourly health per equipment, queried the same way on both paths:
--   SELECT bucket, equipment_id, health_avg, health_min, rul_hours_min, anomaly_score_max,
--          predictions FROM health_hourly WHERE ...
-- TimescaleDB path: a real-time continuous aggregate (materialized_only = false, so the
-- newest hour is included) refreshed every 30 minutes. Plain path (or a TimescaleDB build
-- without continuous aggregates): a plain VIEW with the same columns, bucketed by a
-- time_bucket(interval, timestamptz) shim over date_bin (PostgreSQL >= 14).
-- Idempotent: an existing health_hourly is kept.

-- time_bucket() exists only with TimescaleDB: define a compatible one (fixed-size
-- intervals, same origin 2000-01-03 UTC) when it is missing.
DO $$
BEGIN
    IF to_regprocedure('time_bucket(interval, timestamp with time zone)') IS NULL THEN
        EXECUTE $f$
            CREATE FUNCTION time_bucket(bucket interval, ts timestamptz)
            RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
            $b$ SELECT date_bin(bucket, ts, TIMESTAMPTZ '2000-01-03 00:00:00+00') $b$
        $f$;
    END IF;
END
$$;

DO $$
DECLARE
    tsdb boolean;
    query constant text := $q$
        SELECT time_bucket(INTERVAL '1 hour', ts) AS bucket,
               equipment_id,
               avg(health)        AS health_avg,
               min(health)        AS health_min,
               min(rul_hours)     AS rul_hours_min,
               max(anomaly_score) AS anomaly_score_max,
               count(*)           AS predictions
        FROM predictions
        GROUP BY time_bucket(INTERVAL '1 hour', ts), equipment_id
    $q$;
BEGIN
    IF to_regclass('health_hourly') IS NOT NULL THEN
        RETURN;
    END IF;
    SELECT enabled INTO tsdb FROM schema_features WHERE feature = 'hypertable';
    IF tsdb IS TRUE THEN
        BEGIN
            -- WITH NO DATA: allowed inside the migration's transaction; the policy fills it.
            EXECUTE 'CREATE MATERIALIZED VIEW health_hourly WITH (timescaledb.continuous, '
                    'timescaledb.materialized_only = false) AS ' || query || ' WITH NO DATA';
            PERFORM add_continuous_aggregate_policy('health_hourly',
                start_offset => INTERVAL '3 days',
                end_offset => INTERVAL '1 hour',
                schedule_interval => INTERVAL '30 minutes');
            INSERT INTO schema_features (feature, enabled, detail)
            VALUES ('continuous_aggregate', true,
                    'health_hourly: real-time, refresh every 30 min over the last 3 days')
            ON CONFLICT (feature) DO UPDATE
                SET enabled = true, detail = EXCLUDED.detail, updated_at = now();
            RETURN;
        EXCEPTION WHEN OTHERS THEN
            INSERT INTO schema_features (feature, enabled, detail)
            VALUES ('continuous_aggregate', false, 'plain view health_hourly: ' || SQLERRM)
            ON CONFLICT (feature) DO UPDATE
                SET enabled = false, detail = EXCLUDED.detail, updated_at = now();
        END;
    ELSE
        INSERT INTO schema_features (feature, enabled, detail)
        VALUES ('continuous_aggregate', false, 'plain view health_hourly')
        ON CONFLICT (feature) DO UPDATE
            SET enabled = false, detail = EXCLUDED.detail, updated_at = now();
    END IF;
    EXECUTE 'CREATE VIEW health_hourly AS ' || query;
END
$$;
