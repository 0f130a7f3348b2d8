# Shared helpers for the local service scripts (sourced, not executed).
# Paths are derived from this file's location, so the scripts work from any cwd.
# shellcheck shell=bash

PM_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PM_INFRA_DIR="$(cd "$PM_SCRIPTS_DIR/.." && pwd)"
PM_REPO_DIR="$(cd "$PM_INFRA_DIR/.." && pwd)"

# Services dir (data, logs, pid files, env file). Made absolute so that a relative
# PM_SERVICES_DIR keeps meaning the same directory when a child changes directory.
PM_SVC_DIR="${PM_SERVICES_DIR:-$PM_REPO_DIR/.services}"
mkdir -p "$PM_SVC_DIR"
PM_SVC_DIR="$(cd "$PM_SVC_DIR" && pwd)"

PM_HOST=127.0.0.1

log() { printf '%s\n' "$*"; }
err() { printf '%s\n' "$*" >&2; }
die() {
  err "error: $*"
  exit 1
}

# ms_since T0_NS -> milliseconds elapsed since T0_NS (a `date +%s%N` value).
ms_since() {
  echo $((($(date +%s%N) - $1) / 1000000))
}

# port_open PORT -> 0 when something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$PM_HOST/$1" 2>/dev/null
}

# pid_alive PID PATTERN -> 0 when PID runs and its command line contains PATTERN
# (guards against a stale pid file whose number was reused by another process).
pid_alive() {
  local pid="$1" pattern="$2"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pattern"
}

# pidfile_pid FILE -> prints the pid stored in FILE (empty when missing).
pidfile_pid() {
  if [[ -f "$1" ]]; then tr -dc '0-9' <"$1"; fi
}

# terminate PID PATTERN GRACE_S -> SIGTERM, wait up to GRACE_S seconds, then SIGKILL.
terminate() {
  local pid="$1" pattern="$2" grace="$3" i
  pid_alive "$pid" "$pattern" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 5; i++)); do
    pid_alive "$pid" "$pattern" || return 0
    sleep 0.2
  done
  err "pid $pid still running after ${grace}s: sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 25; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  return 1
}

# with_lock NAME -> serialise start/stop of one service between concurrent callers.
# The lock is held on fd 9 until the calling script exits; children that outlive the
# script (daemons) must be started with `9>&-` so they do not keep the lock.
with_lock() {
  exec 9>"$PM_SVC_DIR/.$1.lock"
  flock -w 300 9 || die "could not lock $PM_SVC_DIR/.$1.lock within 300 s"
}

# log_tail FILE... -> last lines of each existing log file, to stderr.
log_tail() {
  local f shown=0
  for f in "$@"; do
    [[ -s "$f" ]] || continue
    err "----- last lines of $f -----"
    tail -n 40 "$f" >&2 || true
    shown=1
  done
  if ((shown == 0)); then err "(no log output yet in: $*)"; fi
}

# apt_install_no_autostart PKG... -> apt-get update + install, as root (or via sudo),
# with a temporary policy-rc.d that stops Debian from auto-starting the packages'
# own persistent daemons (postgresql main cluster on 5432, redis-server on 6379).
apt_install_no_autostart() {
  local sudo=() policy=/usr/sbin/policy-rc.d added_policy=0 rc=0
  if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null || die "need root (or sudo) to apt-get install $*"
    sudo=(sudo)
  fi
  command -v apt-get >/dev/null || die "apt-get not found: install $* by hand"
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# temporary, from infra/scripts/lib.sh\nexit 101\n' |
      "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    added_policy=1
  fi
  log "installing $* with apt-get (daemon auto-start disabled during install)"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null &&
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null ||
    rc=$?
  if [[ $added_policy -eq 1 ]]; then "${sudo[@]}" rm -f "$policy"; fi
  [[ $rc -eq 0 ]] || die "apt-get install $* failed (exit $rc)"
}
