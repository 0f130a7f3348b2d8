#!/usr/bin/env bash
# Redis (Debian's redis-server) on 127.0.0.1, persisted with an append-only file.
#
#   redis.sh start    install redis-server if missing, start a daemon (loading the data of the
#                     last run from its dir), wait for PING
#   redis.sh start --fresh   (or PM_SERVICES_FRESH=1) delete the old data first
#   redis.sh stop     SIGTERM (then SIGKILL) the daemon this script started; Redis writes its
#                     data on the way down, and it is kept
#   redis.sh status   exit 0 when the port answers PING with PONG
#
# Env: PM_REDIS_PORT (6379), PM_REDIS_START_TIMEOUT (30), PM_SERVICES_DIR (<repo>/.services;
#      this script uses its redis/ folder for data (appendonlydir/, dump.rdb), pid file and
#      log), PM_SERVICES_FRESH (1: like --fresh). appendfsync everysec: a crash loses at most
#      about a second of writes.
# If a Redis already answers PING on the port and this script did not start it, start uses it
# and stop leaves it alone.
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

PORT="${PM_REDIS_PORT:-6379}"
START_TIMEOUT="${PM_REDIS_START_TIMEOUT:-30}"
FRESH="${PM_SERVICES_FRESH:-0}"
RUN="$PM_SVC_DIR/redis"
PIDFILE="$RUN/redis.pid"
LOGFILE="$RUN/redis.log"

# ping PORT -> prints the server's reply to PING (PONG, or an error such as NOAUTH).
ping() {
  timeout 5 redis-cli -h "$PM_HOST" -p "$1" ping 2>&1 | head -n 1 || true
}

install_redis() {
  local before=0 pid
  port_open 6379 && before=1
  apt_install_no_autostart redis-server
  command -v redis-server >/dev/null || die "redis: redis-server still missing after apt-get install"
  # Debian's package runs its own persistent instance on 6379 (/etc/redis/redis.conf). Our
  # policy-rc.d keeps it from starting; if it was started anyway, stop it: 6379 was free before.
  if [[ $before -eq 0 ]] && port_open 6379; then
    log "redis: stopping Debian's redis-server on 6379, started by the install"
    invoke-rc.d redis-server stop >/dev/null 2>&1 || service redis-server stop >/dev/null 2>&1 || true
    pid="$(pidfile_pid /run/redis/redis-server.pid)"
    terminate "$pid" redis-server 10 || true
  fi
}

our_pid() {
  local pid
  pid="$(pidfile_pid "$PIDFILE")"
  pid_alive "$pid" "redis-server" && printf '%s\n' "$pid"
}

start() {
  with_lock redis
  local pid reply t0 deadline
  if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    install_redis
  fi
  if pid="$(our_pid)"; then
    log "redis: already running (pid $pid) on $PM_HOST:$PORT"
    return 0
  fi
  if port_open "$PORT"; then
    reply="$(ping "$PORT")"
    if [[ "$reply" == PONG ]]; then
      log "redis: a Redis already answers PING on $PM_HOST:$PORT (not started by this script): using it"
      return 0
    fi
    die "redis: $PM_HOST:$PORT is taken by a server this script did not start, and PING got" \
      "'$reply'; stop it or use another port (PM_REDIS_PORT=16379)"
  fi
  t0="$(date +%s%N)"
  if [[ "$FRESH" == 1 ]]; then rm -rf "$RUN"; fi
  mkdir -p "$RUN"
  # 9>&-: the daemon must not inherit the start/stop lock.
  if ! redis-server --port "$PORT" --bind "$PM_HOST" --save '900 1 300 100 60 10000' \
    --appendonly yes --appendfsync everysec \
    --daemonize yes --pidfile "$PIDFILE" --logfile "$LOGFILE" --dir "$RUN" 9>&-; then
    log_tail "$LOGFILE"
    die "redis: redis-server failed to start (log: $LOGFILE)"
  fi
  deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if [[ "$(ping "$PORT")" == PONG ]]; then
      pid="$(our_pid)" || pid="?"
      log "redis: started (pid $pid, Redis $(redis-server --version | awk '{sub(/^v=/, "", $3); print $3}')) on" \
        "$PM_HOST:$PORT in $(ms_since "$t0") ms; log $LOGFILE"
      return 0
    fi
    sleep 0.2
  done
  log_tail "$LOGFILE"
  if pid="$(our_pid)"; then terminate "$pid" redis-server 5 || true; fi
  die "redis: no PONG from $PM_HOST:$PORT after ${START_TIMEOUT}s (log: $LOGFILE)"
}

stop() {
  with_lock redis
  local pid
  if pid="$(our_pid)"; then
    terminate "$pid" redis-server 10 || die "redis: pid $pid did not exit"
    rm -f "$PIDFILE"
    log "redis: stopped (pid $pid)"
  else
    rm -f "$PIDFILE"
    if port_open "$PORT"; then
      log "redis: $PM_HOST:$PORT is served by a server this script did not start: leaving it running"
    else
      log "redis: not running"
    fi
  fi
}

status() {
  local pid reply
  command -v redis-cli >/dev/null || {
    log "redis: not installed"
    return 3
  }
  if port_open "$PORT"; then
    reply="$(ping "$PORT")"
    if pid="$(our_pid)"; then
      log "redis: running (pid $pid) on $PM_HOST:$PORT, PING -> $reply"
    else
      log "redis: $PM_HOST:$PORT answers PING -> $reply (server not started by this script)"
    fi
    if [[ "$reply" == PONG ]]; then return 0; fi
    return 1
  fi
  log "redis: stopped"
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
