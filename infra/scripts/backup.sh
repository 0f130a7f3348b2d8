#!/usr/bin/env bash
# One timestamped archive of the database (pg_dump), the Bytewax recovery store and the
# MLflow registry with its artifacts: see connectors/backup.py for what is inside and why
# the recovery store is copied before the database.
#
#   backup.sh [--out DIR] [--database-url URL] [--recovery-dir DIR] [--mlflow-tracking-uri URI]
#
# Defaults: --out $PM_BACKUP_DIR (backups/), PM_DATABASE_URL, PM_RECOVERY_DIR,
# PM_MLFLOW_TRACKING_URI (sqlite:///PATH only). Parts without a source are left out.
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
PY="$PM_REPO_DIR/.venv/bin/python"
[[ -x "$PY" ]] || die "no $PY: run make install"
cd "$PM_REPO_DIR"
exec "$PY" -m connectors.backup create "$@"
