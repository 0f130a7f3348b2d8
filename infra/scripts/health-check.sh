#!/usr/bin/env bash
# One line per service; exit 0 only when Kafka, PostgreSQL and Redis are all healthy.
#   kafka     : metadata + create/list/delete a 1-partition topic with the venv's confluent-kafka
#               (<repo>/.venv), or a TCP connect when there is no venv
#   postgres  : SELECT 1 as pm/pm on database pm (psql, or psycopg from the venv)
#   redis     : PING -> PONG (redis-cli, or redis-py from the venv)
# Ports: PM_KAFKA_PORT (9092), PM_PG_PORT (5432), PM_REDIS_PORT (6379). Each check is bounded.
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

KAFKA="$PM_HOST:${PM_KAFKA_PORT:-9092}"
PG_URL="postgresql://pm:pm@$PM_HOST:${PM_PG_PORT:-5432}/pm"
REDIS_URL="redis://$PM_HOST:${PM_REDIS_PORT:-6379}/0"
PY="$PM_REPO_DIR/.venv/bin/python"
failures=0

report() { # report NAME OK|FAIL DETAIL
  printf '%-9s %-4s %s\n' "$1" "$2" "$3"
  if [[ "$2" != OK ]]; then failures=$((failures + 1)); fi
}

check_kafka() {
  local out
  if ! port_open "${KAFKA##*:}"; then
    report kafka FAIL "$KAFKA: connection refused"
  elif [[ -x "$PY" ]]; then
    # librdkafka's own connection chatter goes to stderr: drop it, the script prints the cause.
    if out="$(timeout 60 "$PY" - "$KAFKA" 2>/dev/null <<'PY'
import sys
import uuid

from confluent_kafka.admin import AdminClient, NewTopic

bootstrap = sys.argv[1]
try:
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000})
    brokers = sorted(admin.list_topics(timeout=10).brokers)
    topic = f"pm-health-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 1, 1)], operation_timeout=15)[topic].result(20)
    assert topic in admin.list_topics(timeout=10).topics, f"{topic} missing after create"
    admin.delete_topics([topic], operation_timeout=15)[topic].result(20)
except Exception as e:  # noqa: BLE001
    print(f"{type(e).__name__}: {e}"[:300])
    sys.exit(1)
print(f"broker ids {brokers}; created, listed and deleted topic {topic}")
PY
    )"; then
      report kafka OK "$KAFKA: $out"
    else
      report kafka FAIL "$KAFKA: ${out:-no answer within 60 s}"
    fi
  else
    report kafka OK "$KAFKA: TCP connect only (no $PY for a topic round trip)"
  fi
}

check_postgres() {
  local out psql
  psql="$(compgen -G '/usr/lib/postgresql/*/bin/psql' | sort -V | tail -n 1 || true)"
  [[ -n "$psql" ]] || psql="$(command -v psql || true)"
  if [[ -n "$psql" ]]; then
    if out="$(PGCONNECT_TIMEOUT=5 timeout 15 "$psql" "$PG_URL" -XAtqc 'SELECT 1' 2>&1)" &&
      [[ "$out" == 1 ]]; then
      report postgres OK "$PM_HOST:${PM_PG_PORT:-5432}: SELECT 1 as pm on database pm"
    else
      report postgres FAIL "$PM_HOST:${PM_PG_PORT:-5432}: $(head -n 1 <<<"${out:-timeout}")"
    fi
  elif [[ -x "$PY" ]]; then
    if out="$(timeout 15 "$PY" -c 'import sys, psycopg
with psycopg.connect(sys.argv[1], connect_timeout=5) as c:
    print(c.execute("SELECT 1").fetchone()[0])' "$PG_URL" 2>&1)" && [[ "$out" == 1 ]]; then
      report postgres OK "$PM_HOST:${PM_PG_PORT:-5432}: SELECT 1 as pm on database pm (psycopg)"
    else
      report postgres FAIL "$PM_HOST:${PM_PG_PORT:-5432}: $(tail -n 1 <<<"${out:-timeout}")"
    fi
  else
    report postgres FAIL "no psql and no venv to run SELECT 1 with"
  fi
}

check_redis() {
  local out
  if command -v redis-cli >/dev/null; then
    out="$(timeout 10 redis-cli -u "$REDIS_URL" ping 2>&1 | head -n 1 || true)"
  elif [[ -x "$PY" ]]; then
    out="$(timeout 10 "$PY" -c 'import sys, redis
print("PONG" if redis.Redis.from_url(sys.argv[1], socket_timeout=5).ping() else "no PONG")' \
      "$REDIS_URL" 2>&1 | tail -n 1 || true)"
  else
    out="no redis-cli and no venv to send PING with"
  fi
  if [[ "$out" == PONG ]]; then
    report redis OK "$PM_HOST:${PM_REDIS_PORT:-6379}: PING -> PONG"
  else
    report redis FAIL "$PM_HOST:${PM_REDIS_PORT:-6379}: ${out:-no answer}"
  fi
}

check_kafka
check_postgres
check_redis
if ((failures)); then
  err "$failures service(s) unhealthy"
  exit 1
fi
