-- 001_core: equipment, feature sets and the four time-series tables.
--
-- Storage path: TimescaleDB hypertables when the extension can be loaded, otherwise plain
-- PostgreSQL with native range partitioning by day (plus a DEFAULT partition) and BRIN
-- indexes on ts. The path taken is recorded in schema_features('hypertable'); later
-- migrations read it from there, and a re-run keeps the path of the first run.
-- Every time-series table has its time column in its primary key, so both paths support
-- the writer's INSERT ... ON CONFLICT DO NOTHING.
-- Idempotent: safe to run again (connectors.migrate runs it once, inside a transaction).

CREATE TABLE IF NOT EXISTS schema_features (
    feature    text PRIMARY KEY,
    enabled    boolean NOT NULL,
    detail     text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS equipment (
    equipment_id   text PRIMARY KEY,
    equipment_type text,
    first_seen     timestamptz NOT NULL,
    last_seen      timestamptz NOT NULL,
    metadata       jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- Feature names in order, per feature set id (sensor_features.features[i] is names[i]).
CREATE TABLE IF NOT EXISTS feature_sets (
    feature_set text PRIMARY KEY,
    names       text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Plain-path partition helpers. On the TimescaleDB path they do nothing (hypertables are
-- not pg_partitioned_table entries), so they exist on both paths.

-- Create the daily partitions [from_day, from_day + days) of a range-partitioned table,
-- moving rows for those days out of its DEFAULT partition first. Days are UTC days.
-- Returns the number of partitions created.
CREATE OR REPLACE FUNCTION pm_ensure_partitions(tbl regclass, from_day date, days int)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    nsp  text;
    base text;
    def  regclass;
    d    date;
    lo   timestamptz;
    hi   timestamptz;
    part text;
    n    int := 0;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = tbl) THEN
        RETURN 0;
    END IF;
    SELECT c.relname, s.nspname INTO base, nsp
    FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
    WHERE c.oid = tbl;
    def := to_regclass(format('%I.%I', nsp, base || '_default'));
    FOR i IN 0 .. days - 1 LOOP
        d := from_day + i;
        part := base || '_p' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(format('%I.%I', nsp, part)) IS NOT NULL;
        lo := d::timestamp AT TIME ZONE 'UTC';
        hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
        EXECUTE format('CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                       nsp, part, tbl);
        IF def IS NOT NULL THEN
            EXECUTE format('WITH moved AS (DELETE FROM %s WHERE ts >= %L AND ts < %L RETURNING *) '
                           'INSERT INTO %I.%I SELECT * FROM moved', def, lo, hi, nsp, part);
        END IF;
        EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                       tbl, nsp, part, lo, hi);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

-- Retention on either path: drop daily partitions (plain) or chunks (TimescaleDB) wholly
-- older than now() - keep, and delete older rows left in a DEFAULT partition or a plain,
-- unpartitioned table. Returns the number of partitions or chunks dropped.
CREATE OR REPLACE FUNCTION pm_drop_older_than(tbl regclass, keep interval)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    cutoff timestamptz := now() - keep;
    nsp    text;
    base   text;
    def    regclass;
    r      record;
    n      int := 0;
BEGIN
    SELECT c.relname, s.nspname INTO base, nsp
    FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
    WHERE c.oid = tbl;
    IF EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = tbl) THEN
        FOR r IN
            SELECT c.oid::regclass AS part
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = tbl
              AND c.relname = base || '_p' || substring(c.relname from '_p([0-9]{8})$')
              AND (to_date(substring(c.relname from '_p([0-9]{8})$'), 'YYYYMMDD') + 1)::timestamp
                  AT TIME ZONE 'UTC' <= cutoff
        LOOP
            EXECUTE format('DROP TABLE %s', r.part);
            n := n + 1;
        END LOOP;
        def := to_regclass(format('%I.%I', nsp, base || '_default'));
        IF def IS NOT NULL THEN
            EXECUTE format('DELETE FROM %s WHERE ts < %L', def, cutoff);
        END IF;
    ELSIF to_regclass('timescaledb_information.hypertables') IS NOT NULL THEN
        -- Dynamic SQL: the view and drop_chunks() exist only with TimescaleDB.
        EXECUTE 'SELECT count(*) FROM timescaledb_information.hypertables '
                'WHERE hypertable_schema = $1 AND hypertable_name = $2' INTO n USING nsp, base;
        IF n > 0 THEN
            EXECUTE 'SELECT count(*) FROM drop_chunks($1, older_than => $2)'
                INTO n USING tbl, keep;
        ELSE
            EXECUTE format('DELETE FROM %s WHERE ts < %L', tbl, cutoff);
        END IF;
    ELSE
        EXECUTE format('DELETE FROM %s WHERE ts < %L', tbl, cutoff);
    END IF;
    RETURN n;
END $$;

-- Plain-path upkeep, e.g. from cron or the app once a day: daily partitions from yesterday
-- to ahead_days ahead for the partitioned tables. Returns partitions created.
CREATE OR REPLACE FUNCTION pm_maintain(ahead_days int DEFAULT 7)
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    n     int := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('pm_maintain'));
    n := n + pm_ensure_partitions('sensor_readings', today - 1, ahead_days + 2);
    n := n + pm_ensure_partitions('sensor_features', today - 1, ahead_days + 2);
    n := n + pm_ensure_partitions('predictions', today - 1, ahead_days + 2);
    RETURN n;
END $$;

DO $$
DECLARE
    tsdb     boolean := false;
    decided  boolean := false;
    parted   text;
BEGIN
    -- A re-run keeps the path the first run took.
    SELECT enabled INTO tsdb FROM schema_features WHERE feature = 'hypertable';
    decided := FOUND;
    IF NOT decided THEN
        tsdb := false;
        IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
            BEGIN
                -- Fails when timescaledb is not in shared_preload_libraries or the role may
                -- not create it: fall back instead of failing.
                CREATE EXTENSION IF NOT EXISTS timescaledb;
                tsdb := true;
            EXCEPTION WHEN OTHERS THEN
                RAISE NOTICE 'timescaledb available but not loadable (%), using plain PostgreSQL',
                    SQLERRM;
            END;
        END IF;
    END IF;
    parted := CASE WHEN tsdb THEN '' ELSE ' PARTITION BY RANGE (ts)' END;

    -- One row per reading; jsonb keeps heterogeneous equipment types in one table.
    EXECUTE $t$
        CREATE TABLE IF NOT EXISTS sensor_readings (
            equipment_id text        NOT NULL,
            ts           timestamptz NOT NULL,
            settings     jsonb       NOT NULL DEFAULT '{}'::jsonb,
            sensors      jsonb       NOT NULL,
            PRIMARY KEY (equipment_id, ts)
        )$t$ || parted;

    -- features[i] is feature_sets.names[i] of the row's feature_set.
    EXECUTE $t$
        CREATE TABLE IF NOT EXISTS sensor_features (
            equipment_id text        NOT NULL,
            ts           timestamptz NOT NULL,
            feature_set  text        NOT NULL,
            features     real[]      NOT NULL,
            PRIMARY KEY (equipment_id, ts, feature_set)
        )$t$ || parted;

    EXECUTE $t$
        CREATE TABLE IF NOT EXISTS predictions (
            equipment_id  text             NOT NULL,
            ts            timestamptz      NOT NULL,
            model_name    text             NOT NULL,
            model_version text             NOT NULL,
            rul           double precision,
            rul_unit      text             NOT NULL,
            rul_hours     double precision,
            rul_lower     double precision,
            rul_upper     double precision,
            health        double precision NOT NULL,
            anomaly_score double precision NOT NULL,
            status        text             NOT NULL,
            top_sensors   text[]           NOT NULL DEFAULT '{}',
            PRIMARY KEY (equipment_id, ts, model_version)
        )$t$ || parted;

    -- Alerts are few: a hypertable on TimescaleDB, a plain table otherwise.
    CREATE TABLE IF NOT EXISTS alerts (
        alert_id        text             NOT NULL,
        equipment_id    text             NOT NULL,
        ts              timestamptz      NOT NULL,
        rule            text             NOT NULL,
        severity        text             NOT NULL,
        state           text             NOT NULL,
        value           double precision,
        threshold       double precision,
        message         text             NOT NULL,
        evidence        jsonb            NOT NULL DEFAULT '{}'::jsonb,
        acknowledged_at timestamptz,
        acknowledged_by text,
        PRIMARY KEY (alert_id, ts)
    );
    CREATE INDEX IF NOT EXISTS alerts_equipment_ts ON alerts (equipment_id, ts DESC);

    IF tsdb THEN
        PERFORM create_hypertable('sensor_readings', 'ts',
                                  chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE);
        PERFORM create_hypertable('sensor_features', 'ts',
                                  chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE);
        PERFORM create_hypertable('predictions', 'ts',
                                  chunk_time_interval => INTERVAL '7 days', if_not_exists => TRUE);
        PERFORM create_hypertable('alerts', 'ts',
                                  chunk_time_interval => INTERVAL '30 days', if_not_exists => TRUE);
        INSERT INTO schema_features (feature, enabled, detail)
        VALUES ('hypertable', true, 'timescaledb ' ||
                (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'))
        ON CONFLICT (feature) DO NOTHING;
    ELSE
        CREATE TABLE IF NOT EXISTS sensor_readings_default PARTITION OF sensor_readings DEFAULT;
        CREATE TABLE IF NOT EXISTS sensor_features_default PARTITION OF sensor_features DEFAULT;
        CREATE TABLE IF NOT EXISTS predictions_default PARTITION OF predictions DEFAULT;
        -- BRIN is tiny and suits append-mostly, time-ordered data (time-range scans
        -- across all equipment); the primary keys serve per-equipment lookups.
        CREATE INDEX IF NOT EXISTS sensor_readings_ts_brin ON sensor_readings USING brin (ts);
        CREATE INDEX IF NOT EXISTS sensor_features_ts_brin ON sensor_features USING brin (ts);
        CREATE INDEX IF NOT EXISTS predictions_ts_brin ON predictions USING brin (ts);
        CREATE INDEX IF NOT EXISTS alerts_ts_brin ON alerts USING brin (ts);
        PERFORM pm_maintain();
        INSERT INTO schema_features (feature, enabled, detail)
        VALUES ('hypertable', false,
                'plain PostgreSQL: range partitions by UTC day + DEFAULT partition '
                '(SELECT pm_maintain() daily), BRIN on ts')
        ON CONFLICT (feature) DO NOTHING;
    END IF;
END
$$;
