#!/usr/bin/env bash
# Restore an archive written by backup.sh: the database into an empty or new database, the
# recovery store into an empty directory, MLflow at its old paths or under --mlflow-root.
#
#   restore.sh ARCHIVE [--database-url URL] [--recovery-dir DIR] [--mlflow-tracking-uri URI]
#              [--mlflow-root DIR] [--force]
#
# Defaults as for backup.sh. Refuses to overwrite anything unless --force.
# Stop the flow first; start it again with the same -r DIR afterwards: it resumes from the
# restored snapshot and replays the rest of the topic.
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
PY="$PM_REPO_DIR/.venv/bin/python"
[[ -x "$PY" ]] || die "no $PY: run make install"
[[ $# -ge 1 ]] || die "usage: $0 ARCHIVE [--database-url URL] [--recovery-dir DIR] [--mlflow-tracking-uri URI] [--mlflow-root DIR] [--force]"
cd "$PM_REPO_DIR"
exec "$PY" -m connectors.backup restore "$@"
