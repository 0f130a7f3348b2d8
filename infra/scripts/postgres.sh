#!/usr/bin/env bash
# PostgreSQL cluster (Debian packages) on 127.0.0.1 for local runs and tests.
#
#   postgres.sh start    install postgresql if missing; reuse the cluster of the last start
#                        (its data is kept), or initdb one when there is none; start it;
#                        ensure role pm (password pm, CREATEDB) and database pm owned by it
#   postgres.sh start --fresh   (or PM_SERVICES_FRESH=1) throw the old cluster away first
#   postgres.sh stop     pg_ctl stop -m fast (then immediate, then SIGKILL); data is kept
#   postgres.sh status   exit 0 when role pm can run SELECT 1 on the port
#
# Env: PM_PG_PORT (5432), PM_PG_START_TIMEOUT (60), PM_SERVICES_DIR (<repo>/.services; this
#      script uses its postgres/ folder), PM_SERVICES_FRESH (1: like --fresh).
# fsync and full_page_writes stay on (a crash cannot corrupt the cluster); synchronous_commit
# is off (a crash may lose the last fraction of a second of commits, never consistency).
# initdb and postgres refuse to run as root: as root the cluster runs as the `postgres` user,
# which must be able to reach the data dir; when it cannot (e.g. a clone under /root), the
# cluster goes to /tmp/pm-postgres-<port> instead and the script says so.
# If something already answers on the port and this script did not start it, start uses it
# (and checks that pm/pm can log in) and stop leaves it alone.
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

PORT="${PM_PG_PORT:-5432}"
FRESH="${PM_SERVICES_FRESH:-0}"
START_TIMEOUT="${PM_PG_START_TIMEOUT:-60}"
STATE="$PM_SVC_DIR/postgres" # always ours; holds the pointer to the cluster base dir
POINTER="$STATE/base"
PM_URL="postgresql://pm:pm@$PM_HOST:$PORT/pm"

mkdir -p "$STATE"

find_pgbin() {
  local initdb
  initdb="$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -n 1 || true)"
  [[ -n "$initdb" ]] && dirname "$initdb"
}

install_postgres() {
  apt_install_no_autostart postgresql
  # The package creates Debian's own cluster (usually 15/main on 5432). Our policy-rc.d keeps
  # it from starting; if it was started anyway (a host policy allowed it), stop it: it did not
  # exist before this install, so the install started it.
  if command -v pg_lsclusters >/dev/null; then
    while read -r ver name cport status _; do
      [[ "$status" == online* ]] || continue
      log "postgres: stopping Debian's cluster $ver/$name on port $cport, started by the install"
      pg_ctlcluster "$ver" "$name" stop || err "postgres: could not stop cluster $ver/$name"
    done < <(pg_lsclusters -h 2>/dev/null || true)
  fi
}

# as_pg CMD... -> run CMD as the postgres user when we are root, else as ourselves.
as_pg() {
  if [[ $EUID -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# mkdir_pg DIR -> create DIR owned by the user the cluster runs as.
mkdir_pg() {
  if [[ $EUID -eq 0 ]]; then
    install -d -o postgres -g postgres -m 700 "$1"
  else
    install -d -m 700 "$1"
  fi
}

# Cluster base dir (data/, postgres.log, run/): $STATE when the postgres user can write
# there, else /tmp/pm-postgres-<port>.
choose_base() {
  if [[ $EUID -ne 0 ]]; then
    printf '%s\n' "$STATE"
    return
  fi
  getent passwd postgres >/dev/null || die "postgres: no 'postgres' user (is the postgresql package installed?)"
  chmod 755 "$STATE"
  if runuser -u postgres -- test -x "$STATE" 2>/dev/null; then
    printf '%s\n' "$STATE"
  else
    err "postgres: the postgres user cannot reach $STATE (a parent directory is not" \
      "world-executable); using /tmp/pm-postgres-$PORT for the cluster instead"
    printf '%s\n' "/tmp/pm-postgres-$PORT"
  fi
}

# current_base -> base dir of the last cluster this script created (empty if none).
current_base() {
  if [[ -f "$POINTER" ]]; then cat "$POINTER"; fi
}

# our_pid BASE -> postmaster pid when the cluster in BASE/data is running.
our_pid() {
  local base="$1" pid
  [[ -n "$base" && -f "$base/data/postmaster.pid" ]] || return 1
  pid="$(head -n 1 "$base/data/postmaster.pid" | tr -dc '0-9')"
  pid_alive "$pid" "$base/data" && printf '%s\n' "$pid"
}

# socket_dir BASE -> directory for the Unix socket (unix socket paths are limited to
# 107 bytes; a deep checkout falls back to /tmp).
socket_dir() {
  local d="$1/run"
  if ((${#d} + 20 > 100)); then d=/tmp; fi
  printf '%s\n' "$d"
}

pm_can_login() {
  PGCONNECT_TIMEOUT=5 "$PGBIN/psql" "$PM_URL" -XAtqc 'SELECT 1' 2>/dev/null | grep -qx 1
}

ensure_role_and_db() {
  local sock="$1"
  "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$sock" -p "$PORT" -U postgres -d postgres <<'SQL' >/dev/null
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pm') THEN
    CREATE ROLE pm LOGIN CREATEDB PASSWORD 'pm';
  ELSE
    ALTER ROLE pm LOGIN CREATEDB PASSWORD 'pm';
  END IF;
END
$$;
SELECT 'CREATE DATABASE pm OWNER pm' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'pm')
\gexec
SQL
}

wait_ready() {
  local deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    "$PGBIN/pg_isready" -q -h "$PM_HOST" -p "$PORT" -t 2 && return 0
    sleep 0.5
  done
  return 1
}

external_hint() {
  local line
  if command -v pg_lsclusters >/dev/null; then
    while read -r line; do
      # shellcheck disable=SC2086
      set -- $line
      if [[ "${3:-}" == "$PORT" && "${4:-}" == online* ]]; then
        err "  it is Debian's cluster $1/$2: stop it with 'pg_ctlcluster $1 $2 stop', or create" \
          "the role: runuser -u postgres -- psql -p $PORT -c \"CREATE ROLE pm LOGIN CREATEDB PASSWORD 'pm'\"" \
          "-c 'CREATE DATABASE pm OWNER pm'"
      fi
    done < <(pg_lsclusters -h 2>/dev/null || true)
  fi
  err "  or use another port: PM_PG_PORT=15432"
}

# init_cluster BASE SOCK -> a new, empty cluster in BASE/data (an old one there is removed).
init_cluster() {
  local base="$1" sock="$2"
  printf '%s\n' "$base" >"$POINTER"
  rm -rf "$base/data" "$base/run"
  mkdir -p "$base"
  if [[ "$base" != "$STATE" ]]; then chmod 755 "$base"; fi
  mkdir_pg "$base/data"
  if [[ "$sock" != /tmp ]]; then mkdir_pg "$sock"; fi
  : >"$base/postgres.log"
  if [[ $EUID -eq 0 ]]; then chown postgres:postgres "$base/postgres.log"; fi

  if ! as_pg "$PGBIN/initdb" -D "$base/data" -U postgres --auth-local=trust \
    --auth-host=scram-sha-256 --encoding=UTF8 --no-locale --no-instructions \
    >"$base/initdb.log" 2>&1; then
    log_tail "$base/initdb.log"
    die "postgres: initdb failed (log: $base/initdb.log)"
  fi
  cat >>"$base/data/postgresql.conf" <<EOF

# ---- local cluster (infra/scripts/postgres.sh; port and socket dir come from pg_ctl -o) ----
listen_addresses = '$PM_HOST'
synchronous_commit = off
timezone = 'UTC'
log_timezone = 'UTC'
EOF
  log "postgres: initialised a new cluster in $base/data"
}

# check_version BASE -> die when the kept cluster was made by another PostgreSQL major version
# (its data is left alone: upgrade it with pg_upgrade, or start --fresh to discard it).
check_version() {
  local have want
  have="$(cat "$1/data/PG_VERSION")"
  want="$("$PGBIN/postgres" --version | awk '{print $3}' | cut -d. -f1)"
  [[ "$have" == "$want" ]] || die "postgres: the cluster in $1/data is PostgreSQL $have but" \
    "the installed server is $want; upgrade it (pg_upgrade) or discard it with --fresh"
}

start() {
  with_lock postgres
  local base pid sock t0
  if [[ -z "$(find_pgbin)" ]]; then install_postgres; fi
  PGBIN="$(find_pgbin)"
  [[ -n "$PGBIN" ]] || die "postgres: no /usr/lib/postgresql/*/bin/initdb after installing postgresql"

  base="$(current_base)"
  if pid="$(our_pid "$base")"; then
    sock="$(socket_dir "$base")"
    ensure_role_and_db "$sock"
    log "postgres: already running (pid $pid) on $PM_HOST:$PORT, data $base/data"
    return 0
  fi
  if port_open "$PORT"; then
    if pm_can_login; then
      log "postgres: something already answers on $PM_HOST:$PORT (not started by this script)" \
        "and pm/pm can log in to database pm: using it"
      return 0
    fi
    err "postgres: $PM_HOST:$PORT is taken by a server this script did not start, and" \
      "$PM_URL cannot log in"
    external_hint
    exit 1
  fi

  t0="$(date +%s%N)"
  if [[ "$FRESH" == 1 || -z "$base" || ! -f "$base/data/PG_VERSION" ]]; then
    base="$(choose_base)"
    sock="$(socket_dir "$base")"
    init_cluster "$base" "$sock"
  else
    sock="$(socket_dir "$base")"
    check_version "$base"
    if [[ "$sock" != /tmp ]]; then mkdir_pg "$sock"; fi
    # clusters made by older versions of this script ran without crash safety: turn it on
    if grep -q '^# ---- throwaway test cluster' "$base/data/postgresql.conf"; then
      as_pg sed -i -e 's/^fsync = off$/fsync = on/' -e 's/^full_page_writes = off$/full_page_writes = on/' \
        -e 's/^# ---- throwaway test cluster.*/# ---- local cluster (infra\/scripts\/postgres.sh) ----/' \
        "$base/data/postgresql.conf"
    fi
    log "postgres: reusing the cluster in $base/data (data kept; start --fresh for an empty one)"
  fi
  if ! as_pg "$PGBIN/pg_ctl" -D "$base/data" -l "$base/postgres.log" -w -t "$START_TIMEOUT" \
    -o "-p $PORT -c listen_addresses=$PM_HOST -c unix_socket_directories=$sock" \
    start >"$base/pg_ctl.log" 2>&1 9>&-; then
    log_tail "$base/pg_ctl.log" "$base/postgres.log"
    die "postgres: pg_ctl start failed (logs: $base/postgres.log)"
  fi
  if ! wait_ready; then
    log_tail "$base/postgres.log"
    die "postgres: pg_isready still failing after ${START_TIMEOUT}s (log: $base/postgres.log)"
  fi
  ensure_role_and_db "$sock"
  pm_can_login || die "postgres: started, but $PM_URL cannot log in (log: $base/postgres.log)"
  pid="$(our_pid "$base")" || true
  log "postgres: started (pid ${pid:-?}, PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'))" \
    "on $PM_HOST:$PORT in $(ms_since "$t0") ms; data $base/data, log $base/postgres.log"
}

stop() {
  with_lock postgres
  local base pid
  PGBIN="$(find_pgbin)"
  base="$(current_base)"
  if pid="$(our_pid "$base")"; then
    if ! as_pg "$PGBIN/pg_ctl" -D "$base/data" -m fast -w -t 30 stop >/dev/null 2>&1; then
      err "postgres: fast shutdown timed out: immediate shutdown"
      as_pg "$PGBIN/pg_ctl" -D "$base/data" -m immediate -w -t 10 stop >/dev/null 2>&1 ||
        terminate "$pid" "$base/data" 1 || true
    fi
    if our_pid "$base" >/dev/null || pid_alive "$pid" "$base/data"; then
      die "postgres: pid $pid is still running after fast and immediate shutdown"
    fi
    log "postgres: stopped (pid $pid); data kept in $base/data"
  elif port_open "$PORT"; then
    log "postgres: $PM_HOST:$PORT is served by a server this script did not start: leaving it running"
  else
    log "postgres: not running"
  fi
}

status() {
  local base pid
  PGBIN="$(find_pgbin)"
  [[ -n "$PGBIN" ]] || {
    log "postgres: not installed"
    return 3
  }
  base="$(current_base)"
  if pid="$(our_pid "$base")"; then
    if pm_can_login; then
      log "postgres: running (pid $pid) on $PM_HOST:$PORT, data $base/data"
      return 0
    fi
    log "postgres: pid $pid is running but $PM_URL cannot log in"
    return 1
  fi
  if port_open "$PORT"; then
    if pm_can_login; then
      log "postgres: $PM_HOST:$PORT answers, pm/pm can log in (server not started by this script)"
      return 0
    fi
    log "postgres: $PM_HOST:$PORT answers but pm/pm cannot log in (server not started by this script)"
    return 1
  fi
  log "postgres: stopped"
  return 3
}

if [[ "${2:-}" == --fresh ]]; then FRESH=1; fi
case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *)
    err "usage: $0 start [--fresh]|stop|status"
    exit 2
    ;;
esac
