"""The TimescaleDB test server (infra/scripts/timescaledb.sh): one in-memory database shared
by every test, so a test empties it first and holds a lock while it uses it."""

from __future__ import annotations

import fcntl
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

# Drops what the migrations (or a test) created in public, keeping the timescaledb extension:
# PGlite is a single backend, and TimescaleDB cannot be created again in the backend that
# loaded it, so DROP EXTENSION would leave only the plain path for the rest of the run.
RESET_SQL = """
DO $$
DECLARE
    r record;
BEGIN
    IF to_regclass('timescaledb_information.continuous_aggregates') IS NOT NULL THEN
        FOR r IN EXECUTE 'SELECT format(''%I.%I'', view_schema, view_name) AS v'
                         ' FROM timescaledb_information.continuous_aggregates' LOOP
            EXECUTE 'DROP MATERIALIZED VIEW IF EXISTS ' || r.v || ' CASCADE';
        END LOOP;
    END IF;
    FOR r IN SELECT c.oid::regclass::text AS obj, c.relkind
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
               AND NOT c.relispartition
               AND NOT EXISTS (SELECT 1 FROM pg_depend d
                               WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                 AND d.deptype = 'e') LOOP
        EXECUTE format('DROP %s IF EXISTS %s CASCADE',
            CASE r.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                           WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, r.obj);
    END LOOP;
    FOR r IN SELECT p.oid::regprocedure::text AS fn
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'public'
               AND NOT EXISTS (SELECT 1 FROM pg_depend d
                               WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                                 AND d.deptype = 'e') LOOP
        EXECUTE 'DROP FUNCTION IF EXISTS ' || r.fn || ' CASCADE';
    END LOOP;
END $$
"""


@contextmanager
def exclusive(url: str, timeout_s: float = 600.0) -> Iterator[None]:
    """Hold a per-server file lock, so test processes on this machine take turns."""
    info = conninfo_to_dict(url)
    path = Path(tempfile.gettempdir()) / f"pm-tsdb-{info.get('host')}-{info.get('port')}.lock"
    with open(path, "a") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as exc:
                if time.monotonic() > deadline:
                    msg = f"{path} held by another test run for {timeout_s} s"
                    raise TimeoutError(msg) from exc
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def reset(url: str) -> None:
    """Empty the public schema of everything but extensions (the TimescaleDB path stays)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(RESET_SQL)
