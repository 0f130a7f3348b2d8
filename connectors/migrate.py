"""Apply the versioned SQL migrations in ``infra/sql/`` to a PostgreSQL database.

Files named ``NNN_name.sql`` are applied in order of their names, each in its own
transaction, and recorded in ``schema_migrations(version, applied_at)`` with the file's
stem as the version. A session-level advisory lock serialises concurrent callers, so two
workers starting together apply each file once. Files must be idempotent and must not
contain their own BEGIN/COMMIT.

CLI: ``python -m connectors.migrate --database-url URL [--sql-dir DIR]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psycopg

from models.logsafe import redact, secret_parts

SQL_DIR = Path(__file__).resolve().parents[1] / "infra" / "sql"

# Arbitrary constant: pg_advisory_lock key shared by every migrating process.
LOCK_KEY = 0x706D5F6D69677261  # "pm_migra"


def migration_files(sql_dir: Path = SQL_DIR) -> list[Path]:
    """The migration files in ``sql_dir``, in the order they are applied."""
    return sorted(p for p in sql_dir.glob("*.sql") if p.stem[:3].isdigit())


def apply_migrations(dsn: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply the pending migrations; return the versions applied now, in order."""
    files = migration_files(sql_dir)
    applied_now: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            for path in files:
                if path.stem in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute(
                        "INSERT INTO schema_migrations (version) VALUES (%s)",
                        (path.stem,),
                    )
                applied_now.append(path.stem)
        finally:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return applied_now


def storage_path(dsn: str) -> str:
    """``"timescaledb"`` or ``"plain"``: the path recorded by the first migration."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT enabled FROM schema_features WHERE feature = 'hypertable'"
        ).fetchone()
    if row is None:
        raise RuntimeError("schema_features has no 'hypertable' row: migrations not applied")
    return "timescaledb" if row[0] else "plain"


def schema_features(dsn: str) -> dict[str, tuple[bool, str]]:
    """Feature name -> (enabled, detail), as recorded by the migrations."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT feature, enabled, detail FROM schema_features").fetchall()
    return {feature: (enabled, detail or "") for feature, enabled, detail in rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m connectors.migrate", description=__doc__)
    parser.add_argument("--database-url", required=True, help="postgresql://user@host:port/db")
    parser.add_argument("--sql-dir", type=Path, default=SQL_DIR, help="migration files")
    args = parser.parse_args(argv)
    try:
        return _report(args.database_url, args.sql_dir)
    except psycopg.Error as exc:  # psycopg may echo the DSN, password included
        message = redact(f"{type(exc).__name__}: {exc}", secret_parts(args.database_url))
        print(f"migrate: {message.strip()}", file=sys.stderr)
        return 2


def _report(database_url: str, sql_dir: Path) -> int:
    applied = apply_migrations(database_url, sql_dir)
    if applied:
        print("applied: " + ", ".join(applied))
    else:
        print("applied: nothing (schema up to date)")
    print(f"storage path: {storage_path(database_url)}")
    for feature, (enabled, detail) in sorted(schema_features(database_url).items()):
        print(f"  {feature}: {'on' if enabled else 'off'} ({detail})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
