#!/usr/bin/env bash
# Single-node Apache Kafka 4.x (KRaft, broker+controller) on 127.0.0.1 from Maven Central jars.
#
#   kafka.sh start    resolve jars (first run only); reuse the data dir of the last start
#                     (topics and messages are kept) or format one when there is none; start, wait
#   kafka.sh start --fresh   (or PM_SERVICES_FRESH=1) delete the old data dir first
#   kafka.sh stop     SIGTERM (controlled shutdown), SIGKILL after PM_KAFKA_STOP_TIMEOUT s; data kept
#   kafka.sh status   exit 0 when a broker answers on the port (ours or someone else's)
#
# Env: PM_KAFKA_PORT (9092), PM_KAFKA_CONTROLLER_PORT (9093), PM_KAFKA_HEAP (512m),
#      PM_KAFKA_START_TIMEOUT (90, at most 120), PM_KAFKA_STOP_TIMEOUT (30),
#      PM_KAFKA_LIBS (<repo>/.kafka/libs: jar cache, kept across runs),
#      PM_SERVICES_DIR (<repo>/.services; this script uses its kafka/ folder),
#      PM_SERVICES_FRESH (1: like --fresh).
# A kept data dir must be started with the same controller port it was formatted with
# (the KRaft quorum records it); topics keep the retention of infra/kafka/server.properties.
# If something already accepts connections on PM_KAFKA_PORT (e.g. the docker-compose broker)
# and this script did not start it, start uses it as is and stop leaves it alone.
# Needs java 17+ and mvn (first run: Maven Central).
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

CONF_DIR="$PM_INFRA_DIR/kafka"
LIBS="${PM_KAFKA_LIBS:-$PM_REPO_DIR/.kafka/libs}"
RUN="$PM_SVC_DIR/kafka"
PORT="${PM_KAFKA_PORT:-9092}"
CPORT="${PM_KAFKA_CONTROLLER_PORT:-9093}"
HEAP="${PM_KAFKA_HEAP:-512m}"
START_TIMEOUT="${PM_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${PM_KAFKA_STOP_TIMEOUT:-30}"
FRESH="${PM_SERVICES_FRESH:-0}"
PIDFILE="$RUN/kafka.pid"
PROPS="$RUN/server.properties"
LOGS="$RUN/logs"

((START_TIMEOUT <= 120)) || START_TIMEOUT=120
[[ "$PORT" != "$CPORT" ]] || die "PM_KAFKA_PORT and PM_KAFKA_CONTROLLER_PORT are both $PORT"

jvm_common() {
  printf '%s\n' -Dlog4j2.configurationFile="$CONF_DIR/log4j2.xml" -Dkafka.logs.dir="$LOGS" \
    -Djava.awt.headless=true -cp "$LIBS/*"
}

check_java() {
  command -v java >/dev/null || die "java not found (Kafka 4.x needs Java 17+)"
  local v
  v="$(java -version 2>&1 | sed -n 's/.* version "\([0-9]*\).*/\1/p' | head -n 1)"
  [[ -n "$v" && "$v" -ge 17 ]] || die "Kafka 4.x needs Java 17+, found: $(java -version 2>&1 | head -n 1)"
}

# Copy every runtime jar of infra/kafka/pom.xml into $LIBS, once per pom.xml content.
resolve_jars() {
  local want stamp="$LIBS/.resolved-pom.sha256" mvnlog t0 n
  want="$(sha256sum "$CONF_DIR/pom.xml" | cut -c1-64)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null; then
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found: needed once to fetch the Kafka jars into $LIBS"
  mkdir -p "$LIBS"
  mvnlog="$(dirname "$LIBS")/mvn-resolve.log"
  rm -f "$stamp" "$LIBS"/*.jar
  log "kafka: resolving broker jars with Maven into $LIBS (first run only) ..."
  t0=$SECONDS
  if ! mvn -B -q -Dstyle.color=never -f "$CONF_DIR/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$LIBS" >"$mvnlog" 2>&1; then
    log_tail "$mvnlog"
    die "jar resolution failed (full log: $mvnlog)"
  fi
  compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null || die "mvn succeeded but no kafka_2.13 jar in $LIBS"
  printf '%s\n' "$want" >"$stamp"
  n="$(compgen -G "$LIBS/*.jar" | wc -l)"
  log "kafka: $n jars resolved in $((SECONDS - t0)) s"
}

# Write $PROPS from the template with this run's ports and data dir.
write_props() {
  local key n
  sed -e "s#^listeners=.*#listeners=PLAINTEXT://$PM_HOST:$PORT,CONTROLLER://$PM_HOST:$CPORT#" \
    -e "s#^advertised.listeners=.*#advertised.listeners=PLAINTEXT://$PM_HOST:$PORT,CONTROLLER://$PM_HOST:$CPORT#" \
    -e "s#^controller.quorum.bootstrap.servers=.*#controller.quorum.bootstrap.servers=$PM_HOST:$CPORT#" \
    -e "s#^log.dirs=.*#log.dirs=$RUN/data#" \
    "$CONF_DIR/server.properties" >"$PROPS"
  for key in listeners advertised.listeners controller.quorum.bootstrap.servers log.dirs; do
    n="$(grep -c "^$key=" "$PROPS" || true)"
    [[ "$n" == 1 ]] || die "$CONF_DIR/server.properties must set $key exactly once (found $n)"
  done
}

# cluster_id -> a random Kafka cluster id, as `StorageTool random-uuid` prints it (16 random
# bytes, URL-safe base64 without padding, never starting with "-"), without a 1.5 s JVM start.
cluster_id() {
  local id
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c 1-22)"
    [[ "$id" == -* || "$id" == AAAAAAAAAAAAAAAAAAAAA[AB] ]] || break
  done
  printf '%s\n' "$id"
}

our_pid() {
  local pid
  pid="$(pidfile_pid "$PIDFILE")"
  pid_alive "$pid" "$PROPS" && printf '%s\n' "$pid"
}

start() {
  with_lock kafka
  local pid cid t0 jvm deadline
  if pid="$(our_pid)"; then
    if port_open "$PORT"; then
      log "kafka: already running (pid $pid) on $PM_HOST:$PORT"
      return 0
    fi
    err "kafka: pid $pid is running but $PM_HOST:$PORT does not answer: restarting it"
    terminate "$pid" "$PROPS" "$STOP_TIMEOUT" || true
  fi
  if port_open "$PORT"; then
    log "kafka: something already answers on $PM_HOST:$PORT (not started by this script," \
      "e.g. docker compose): using it as is"
    return 0
  fi
  if port_open "$CPORT"; then
    die "kafka: controller port $PM_HOST:$CPORT is taken by another process; set PM_KAFKA_CONTROLLER_PORT"
  fi
  check_java
  resolve_jars
  t0="$(date +%s%N)"
  mapfile -t jvm < <(jvm_common)
  if [[ "$FRESH" == 1 || ! -f "$RUN/data/meta.properties" ]]; then
    rm -rf "$RUN"
    mkdir -p "$LOGS" "$RUN/data"
    write_props
    cid="$(cluster_id)"
    if ! java "${jvm[@]}" -Xmx256m kafka.tools.StorageTool format --standalone -t "$cid" -c "$PROPS" \
      >"$LOGS/format.log" 2>&1; then
      log_tail "$LOGS/format.log"
      die "kafka: formatting $RUN/data failed"
    fi
    log "kafka: formatted a new data dir $RUN/data"
  else
    mkdir -p "$LOGS"
    write_props
    rm -f "$LOGS/server.log" # the readiness check below looks for this start's line
    log "kafka: reusing $RUN/data (topics and messages kept; start --fresh for an empty broker)"
  fi
  # setsid: own session, so a Ctrl-C in the calling terminal does not reach the broker.
  # 9>&-: do not inherit the start/stop lock.
  setsid nohup java -Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
    -XX:+ExitOnOutOfMemoryError "${jvm[@]}" kafka.Kafka "$PROPS" \
    >"$LOGS/stdout.log" 2>&1 </dev/null 9>&- &
  pid=$!
  printf '%s\n' "$pid" >"$PIDFILE"
  deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if grep -q "Kafka Server started" "$LOGS/server.log" 2>/dev/null && port_open "$PORT"; then
      log "kafka: started (pid $pid) on $PM_HOST:$PORT, controller $PM_HOST:$CPORT," \
        "ready in $(ms_since "$t0") ms (format + boot); logs $LOGS"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE"
      log_tail "$LOGS/stdout.log" "$LOGS/server.log"
      die "kafka: broker exited during startup (logs: $LOGS)"
    fi
    sleep 0.5
  done
  log_tail "$LOGS/stdout.log" "$LOGS/server.log"
  terminate "$pid" "$PROPS" 10 || true
  rm -f "$PIDFILE"
  die "kafka: not ready after ${START_TIMEOUT}s (no 'Kafka Server started' + open port); stopped it; logs: $LOGS"
}

stop() {
  with_lock kafka
  local pid t0
  if pid="$(our_pid)"; then
    t0=$SECONDS
    terminate "$pid" "$PROPS" "$STOP_TIMEOUT" || die "kafka: pid $pid did not exit"
    rm -f "$PIDFILE"
    log "kafka: stopped (pid $pid) in $((SECONDS - t0)) s"
  else
    rm -f "$PIDFILE"
    if port_open "$PORT"; then
      log "kafka: $PM_HOST:$PORT is served by a broker this script did not start: leaving it running"
    else
      log "kafka: not running"
    fi
  fi
}

status() {
  local pid
  if pid="$(our_pid)"; then
    if port_open "$PORT"; then
      log "kafka: running (pid $pid) on $PM_HOST:$PORT, controller $PM_HOST:$CPORT; logs $LOGS"
      return 0
    fi
    log "kafka: pid $pid is running but $PM_HOST:$PORT does not answer (starting or unhealthy)"
    return 1
  fi
  if port_open "$PORT"; then
    log "kafka: $PM_HOST:$PORT answers (broker not started by this script)"
    return 0
  fi
  log "kafka: stopped"
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
