"""Back up and restore what the system cannot rebuild: the database, the Bytewax recovery
store and the MLflow registry with its artifacts, in one timestamped archive.

``backup`` writes ``pm-backup-<UTC time>.tar.gz`` holding ``manifest.json`` (what is inside,
with sizes, SHA-256 and row counts), ``database.dump`` (``pg_dump -Fc``), ``recovery/``
(each partition file copied with SQLite's online backup) and ``mlflow/`` (the registry's
SQLite file and the artifact directories it points to). The recovery store is copied
*before* the database: on restore the flow resumes from the recovery snapshot and replays
what came after it into a database that may already hold it, which the idempotent sinks
absorb; the other order could lose rows. Back up a running flow only when it runs with
``-b`` (snapshot retention) longer than the backup takes; else stop it first.

``restore`` puts an archive back: the dump into an empty (or new) database, the recovery
files into an empty directory, the MLflow files at their old paths or under a new root
(artifact locations in the registry are rewritten).

CLI (``infra/scripts/backup.sh`` / ``restore.sh``, ``make backup`` / ``make restore``)::

    python -m connectors.backup create --out backups [--database-url URL]
        [--recovery-dir DIR] [--mlflow-tracking-uri sqlite:///mlflow.db]
    python -m connectors.backup restore ARCHIVE [--database-url URL] [--recovery-dir DIR]
        [--mlflow-tracking-uri sqlite:///PATH] [--mlflow-root DIR] [--force]
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from models.logsafe import redact, secret_parts

FORMAT_VERSION = 1
# MLflow tables and columns that hold artifact locations (those present are rewritten).
_MLFLOW_LOCATIONS = {
    "experiments": ["artifact_location"],
    "runs": ["artifact_uri"],
    "model_versions": ["source", "storage_location"],
    "logged_models": ["artifact_location"],
}


class BackupError(RuntimeError):
    """A backup or restore that cannot go on (the message says why)."""


def pg_tool(name: str) -> str:
    """The newest ``pg_dump``/``pg_restore`` installed (Debian keeps them per version)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version_key)
    path = found[-1] if found else shutil.which(name)
    if not path:
        raise BackupError(f"{name} not found (apt-get install postgresql-client)")
    return path


def _version_key(path: str) -> tuple[int, ...]:
    part = Path(path).parts[-3]
    return tuple(int(x) for x in part.split(".") if x.isdigit())


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sqlite_copy(src: Path, dst: Path) -> None:
    """A consistent copy of a SQLite file that may be in use (the online backup API)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(f"file:{src}?mode=ro", uri=True) as s, sqlite3.connect(dst) as d:
        s.backup(d)
    s.close()
    d.close()


def _sqlite_path(tracking_uri: str) -> Path | None:
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///") :])
    return None


def _file_path(uri: str) -> Path | None:
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if uri.startswith("/"):
        return Path(uri)
    return None


def _run(cmd: list[str], secrets: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        shown = " ".join(Path(cmd[0]).name if i == 0 else c for i, c in enumerate(cmd))
        raise BackupError(redact(f"{shown} failed: {proc.stderr.strip()[-2000:]}", secrets))


# -- create ----------------------------------------------------------------------------


def create_backup(
    out_dir: Path,
    database_url: str | None,
    recovery_dir: Path | None,
    mlflow_tracking_uri: str | None,
) -> Path:
    """Write one archive into ``out_dir``; returns its path."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"format": FORMAT_VERSION, "created_at": stamp, "contents": {}}
    with tempfile.TemporaryDirectory(prefix="pm-backup-") as tmp_name:
        tmp = Path(tmp_name)
        # 1. the recovery store first (see the module docstring)
        if recovery_dir is not None:
            files = sorted(recovery_dir.glob("*.sqlite3"))
            if not files:
                raise BackupError(f"no recovery partitions (*.sqlite3) in {recovery_dir}")
            entries = []
            for f in files:
                sqlite_copy(f, tmp / "recovery" / f.name)
                entries.append(_entry(tmp / "recovery" / f.name, tmp))
            manifest["contents"]["recovery"] = {"source": str(recovery_dir), "files": entries}
        # 2. the model registry and its artifacts
        if mlflow_tracking_uri:
            manifest["contents"]["mlflow"] = _backup_mlflow(mlflow_tracking_uri, tmp)
        # 3. the database last
        if database_url:
            manifest["contents"]["database"] = _backup_database(database_url, tmp)
        if not manifest["contents"]:
            raise BackupError("nothing to back up: give a database URL, a recovery dir or MLflow")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        archive = out_dir / f"pm-backup-{stamp}.tar.gz"
        partial = archive.with_suffix(".partial")
        with tarfile.open(partial, "w:gz") as tar:
            for item in sorted(tmp.iterdir()):
                tar.add(item, arcname=item.name)
        partial.rename(archive)
    return archive


def _entry(path: Path, root: Path) -> dict[str, Any]:
    return {"path": str(path.relative_to(root)), "bytes": path.stat().st_size,
            "sha256": sha256(path)}  # fmt: skip


def _backup_database(url: str, tmp: Path) -> dict[str, Any]:
    secrets = secret_parts(url)
    with psycopg.connect(url, connect_timeout=10) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        tables = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
            " ORDER BY 1"
        ).fetchall()
        counts = {}
        for (table,) in tables:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            counts[table] = int(row.fetchone()[0])  # type: ignore[index]
    _run([pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
          f"--file={tmp / 'database.dump'}", f"--dbname={url}"], secrets)  # fmt: skip
    info = conninfo_to_dict(url)
    return {
        **_entry(tmp / "database.dump", tmp),
        "dbname": info.get("dbname"),
        "server_version": version[0] if version else None,
        "row_counts": counts,
    }


def _backup_mlflow(tracking_uri: str, tmp: Path) -> dict[str, Any]:
    db = _sqlite_path(tracking_uri)
    if db is None:
        raise BackupError(
            "only sqlite:/// MLflow tracking URIs are backed up here; for an MLflow server, "
            "back up its backend store and artifact bucket with their own tools"
        )
    if not db.is_file():
        raise BackupError(f"MLflow database {db} does not exist")
    sqlite_copy(db, tmp / "mlflow" / "mlflow.db")
    roots = set()
    with sqlite3.connect(tmp / "mlflow" / "mlflow.db") as conn:
        for (loc,) in conn.execute("SELECT artifact_location FROM experiments"):
            path = _file_path(loc or "")
            if path is not None:
                roots.add(path)
    conn.close()
    artifacts = []
    for i, root in enumerate(sorted(roots)):
        if root.is_dir():
            shutil.copytree(root, tmp / "mlflow" / "artifacts" / str(i))
            artifacts.append({"index": i, "source": str(root)})
    return {"source": str(db), **_entry(tmp / "mlflow" / "mlflow.db", tmp),
            "artifact_roots": artifacts}  # fmt: skip


# -- restore ---------------------------------------------------------------------------


def restore_backup(
    archive: Path,
    database_url: str | None,
    recovery_dir: Path | None,
    mlflow_tracking_uri: str | None,
    mlflow_root: Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Restore the parts of ``archive`` a target is given for; returns the manifest."""
    with tempfile.TemporaryDirectory(prefix="pm-restore-") as tmp_name:
        tmp = Path(tmp_name)
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")
        manifest = json.loads((tmp / "manifest.json").read_text())
        if manifest.get("format") != FORMAT_VERSION:
            raise BackupError(f"unknown backup format {manifest.get('format')!r}")
        contents = manifest["contents"]
        for part in ("recovery", "mlflow", "database"):
            entries = contents.get(part, {})
            for e in entries.get("files", [entries] if "sha256" in entries else []):
                if sha256(tmp / e["path"]) != e["sha256"]:
                    raise BackupError(f"{e['path']}: checksum mismatch, the archive is damaged")
        if database_url and "database" in contents:
            _restore_database(tmp / "database.dump", database_url, force)
        if recovery_dir is not None and "recovery" in contents:
            _restore_dir(tmp / "recovery", recovery_dir, force)
        if "mlflow" in contents and (mlflow_tracking_uri or mlflow_root):
            _restore_mlflow(tmp / "mlflow", contents["mlflow"], mlflow_tracking_uri,
                            mlflow_root, force)  # fmt: skip
    return manifest


def _restore_dir(src: Path, dst: Path, force: bool) -> None:
    if dst.exists() and any(dst.iterdir()):
        if not force:
            raise BackupError(f"{dst} is not empty (use --force to replace its contents)")
        shutil.rmtree(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        shutil.copy2(f, dst / f.name)


def _restore_database(dump: Path, url: str, force: bool) -> None:
    secrets = secret_parts(url)
    info = conninfo_to_dict(url)
    dbname = str(info["dbname"]) if info.get("dbname") else None
    try:
        conn = psycopg.connect(url, connect_timeout=10)
    except psycopg.OperationalError as exc:
        if not dbname or f'database "{dbname}" does not exist' not in str(exc):
            raise BackupError(redact(f"cannot connect: {exc}", secrets)) from None
        admin = make_conninfo(url, dbname="postgres")
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as c:
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        conn = psycopg.connect(url, connect_timeout=10)
    with conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v')"
        ).fetchone()
    if row and row[0] and not force:
        raise BackupError(
            f"database {dbname} already has tables: restore into a new database, or use "
            "--force to drop and replace the objects in the backup"
        )
    cmd = [pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
           f"--dbname={url}"]  # fmt: skip
    if force:
        cmd += ["--clean", "--if-exists"]
    _run([*cmd, str(dump)], secrets)


def _restore_mlflow(
    src: Path, info: dict[str, Any], tracking_uri: str | None, root: Path | None, force: bool
) -> None:
    db = _sqlite_path(tracking_uri) if tracking_uri else None
    if tracking_uri and db is None:
        raise BackupError("the MLflow target must be a sqlite:/// tracking URI")
    if db is None:
        assert root is not None
        db = root / "mlflow.db"
    if db.exists() and not force:
        raise BackupError(f"{db} exists (use --force to replace it)")
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "mlflow.db", db)
    moves: list[tuple[str, str]] = []
    for a in info.get("artifact_roots", []):
        old = Path(a["source"])
        new = (root / "artifacts" / str(a["index"])) if root is not None else old
        if new.exists():
            if not force:
                raise BackupError(f"{new} exists (use --force to replace it)")
            shutil.rmtree(new)
        shutil.copytree(src / "artifacts" / str(a["index"]), new)
        if new != old:
            moves.append((str(old), str(new)))
    if moves:
        _rewrite_locations(db, moves)


def _rewrite_locations(db: Path, moves: list[tuple[str, str]]) -> None:
    """Point the registry's artifact locations at the restored directories."""
    with sqlite3.connect(db) as conn:
        for table, columns in _MLFLOW_LOCATIONS.items():
            present = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            for column in columns:
                if column not in present:
                    continue
                for old, new in moves:
                    conn.execute(
                        f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (old, new)
                    )
    conn.close()


# -- CLI -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python -m connectors.backup",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="write a backup archive")
    c.add_argument("--out", type=Path, default=Path(env.get("PM_BACKUP_DIR", "backups")))
    r = sub.add_parser("restore", help="restore an archive")
    r.add_argument("archive", type=Path)
    r.add_argument("--mlflow-root", type=Path, help="restore MLflow here (db + artifacts)")
    r.add_argument("--force", action="store_true", help="replace what is in the targets")
    for p in (c, r):
        p.add_argument("--database-url", default=env.get("PM_DATABASE_URL"),
                       help="PostgreSQL URL (default PM_DATABASE_URL)")  # fmt: skip
        p.add_argument("--recovery-dir", type=Path, default=env.get("PM_RECOVERY_DIR"),
                       help="Bytewax recovery store (default PM_RECOVERY_DIR)")  # fmt: skip
        p.add_argument("--mlflow-tracking-uri", default=env.get("PM_MLFLOW_TRACKING_URI"),
                       help="sqlite:///PATH (default PM_MLFLOW_TRACKING_URI, else for create "
                       "<repo>/mlflow.db if it exists)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.command == "create" and not args.mlflow_tracking_uri:
        from connectors.settings import PROJECT_DIR

        if (PROJECT_DIR / "mlflow.db").is_file():  # the flow's default registry
            args.mlflow_tracking_uri = f"sqlite:///{PROJECT_DIR / 'mlflow.db'}"
    secrets = secret_parts(args.database_url or "")
    try:
        if args.command == "create":
            path = create_backup(args.out, args.database_url, args.recovery_dir,
                                 args.mlflow_tracking_uri)  # fmt: skip
            manifest = json.loads(_read_member(path, "manifest.json"))
            print(f"backup: {path}")
            print(f"contents: {', '.join(sorted(manifest['contents']))}")
        else:
            manifest = restore_backup(
                args.archive,
                args.database_url,
                args.recovery_dir,
                args.mlflow_tracking_uri,
                args.mlflow_root,
                args.force,
            )
            print(f"restored {args.archive} (created {manifest['created_at']})")
        return 0
    except (BackupError, psycopg.Error, OSError, sqlite3.Error) as exc:
        print(f"backup: {redact(str(exc), secrets)}", file=sys.stderr)
        return 2


def _read_member(archive: Path, name: str) -> str:
    with tarfile.open(archive, "r:gz") as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read().decode()


if __name__ == "__main__":
    sys.exit(main())
