#!/usr/bin/env bash
# Local Kafka + PostgreSQL + Redis for tests and local runs (no Docker).
#
#   services.sh up       start all three (Kafka in parallel with the others), print a summary
#                        and the env lines for a test run; also written to $PM_SERVICES_DIR/env.
#                        Data of the last run (database, topics, Redis keys) is kept.
#   services.sh up --fresh   (or PM_SERVICES_FRESH=1) start all three empty
#   services.sh down     stop what these scripts started (servers found already running are left)
#   services.sh status   one line per service; exit 0 when all three answer
#
# Ports: PM_KAFKA_PORT (9092), PM_KAFKA_CONTROLLER_PORT (9093), PM_PG_PORT (5432),
# PM_REDIS_PORT (6379), PM_TSDB_PORT (55434, the in-memory TimescaleDB for tests of
# timescaledb.sh). Data, logs and pid files live under PM_SERVICES_DIR (<repo>/.services).
# Use the env file with:  set -a; . .services/env; set +a
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

ENV_FILE="$PM_SVC_DIR/env"

env_lines() {
  printf 'PM_TEST_KAFKA_BROKERS=%s:%s\n' "$PM_HOST" "${PM_KAFKA_PORT:-9092}"
  printf 'PM_TEST_DATABASE_URL=postgresql://pm:pm@%s:%s/pm\n' "$PM_HOST" "${PM_PG_PORT:-5432}"
  printf 'PM_TEST_REDIS_URL=redis://%s:%s/0\n' "$PM_HOST" "${PM_REDIS_PORT:-6379}"
  printf 'PM_TEST_TIMESCALE_URL=postgresql://postgres:postgres@%s:%s/postgres?sslmode=disable\n' \
    "$PM_HOST" "${PM_TSDB_PORT:-55434}"
}

status_all() {
  local rc=0
  "$PM_SCRIPTS_DIR/kafka.sh" status || rc=1
  "$PM_SCRIPTS_DIR/postgres.sh" status || rc=1
  "$PM_SCRIPTS_DIR/redis.sh" status || rc=1
  "$PM_SCRIPTS_DIR/timescaledb.sh" status || rc=1
  return $rc
}

up() {
  local t0 kafka_out="$PM_SVC_DIR/kafka-start.out" kpid failed=()
  local tsdb_out="$PM_SVC_DIR/tsdb-start.out" tpid
  t0="$(date +%s%N)"
  # Kafka is the slow one (JVM, first-run jar download): start it in the background.
  "$PM_SCRIPTS_DIR/kafka.sh" start >"$kafka_out" 2>&1 &
  kpid=$!
  # TimescaleDB (Node, first-run npm ci) too.
  "$PM_SCRIPTS_DIR/timescaledb.sh" start >"$tsdb_out" 2>&1 &
  tpid=$!
  "$PM_SCRIPTS_DIR/postgres.sh" start || failed+=(postgres)
  "$PM_SCRIPTS_DIR/redis.sh" start || failed+=(redis)
  wait "$kpid" || failed+=(kafka)
  wait "$tpid" || failed+=(timescaledb)
  cat "$kafka_out" "$tsdb_out"
  rm -f "$kafka_out" "$tsdb_out"
  log ""
  log "== services up in $(ms_since "$t0") ms =="
  status_all || true
  if ((${#failed[@]})); then
    rm -f "$ENV_FILE"
    die "failed to start: ${failed[*]} (logs under $PM_SVC_DIR)"
  fi
  env_lines >"$ENV_FILE"
  log ""
  log "# test env (also in $ENV_FILE):"
  env_lines
}

down() {
  local kpid rc=0
  "$PM_SCRIPTS_DIR/kafka.sh" stop &
  kpid=$!
  "$PM_SCRIPTS_DIR/postgres.sh" stop || rc=1
  "$PM_SCRIPTS_DIR/redis.sh" stop || rc=1
  "$PM_SCRIPTS_DIR/timescaledb.sh" stop || rc=1
  wait "$kpid" || rc=1
  rm -f "$ENV_FILE"
  return $rc
}

status() {
  if status_all; then
    log ""
    env_lines
    return 0
  fi
  return 1
}

if [[ "${2:-}" == --fresh ]]; then export PM_SERVICES_FRESH=1; fi
case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *)
    err "usage: $0 up [--fresh]|down|status"
    exit 2
    ;;
esac
