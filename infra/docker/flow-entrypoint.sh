#!/bin/sh
# Entrypoint of the project image (Dockerfile).
#
# When the command is the flow (`python -m bytewax.run ...`), prepare it first:
#   1. Recovery: if the command names a recovery directory (-r DIR, --recovery-directory DIR,
#      --recovery-directory=DIR, or env BYTEWAX_RECOVERY_DIRECTORY) that holds no
#      partitions yet, create PM_RECOVERY_PARTITIONS (default 4) of them with
#      `python -m bytewax.recovery DIR N`. Bytewax refuses an empty recovery directory, and
#      the partition count is fixed once created: choose at least the largest total number
#      of workers you will run (it may exceed the worker count, never fall short of it).
#      With several processes (-i ID -a "h0:p;h1:p;..." or BYTEWAX_PROCESS_ID and
#      BYTEWAX_ADDRESSES), each with its own recovery volume (a Kubernetes StatefulSet),
#      every partition must live on exactly one process: process ID of P keeps the
#      partitions j with j mod P = ID of the N created, so N must be at least P (best: a
#      multiple of P).
#   2. Migrations: if PM_DATABASE_URL is set and PM_POSTGRES__MIGRATE_ON_START is not
#      false/0/no/off, apply infra/sql with `python -m connectors.migrate` (idempotent,
#      serialised by an advisory lock, so concurrent starts are safe).
# Then exec the command, so it runs as PID 1 and receives SIGTERM from `docker stop`.
# Any other command (simulator, trainer, a shell) is exec'd unchanged.
#
# Env: PM_RECOVERY_PARTITIONS (4), PM_DATABASE_URL, PM_POSTGRES__MIGRATE_ON_START (true),
#      PM_SQL_DIR (/app/infra/sql: the migrations copied into the image).
set -eu

log() { printf 'flow-entrypoint: %s\n' "$*" >&2; }

is_flow=false
recovery_dir="${BYTEWAX_RECOVERY_DIRECTORY:-}"
process_id="${BYTEWAX_PROCESS_ID:-}"
addresses="${BYTEWAX_ADDRESSES:-}"
prev=""
for arg in "$@"; do
  case "$arg" in
    bytewax.run) [ "$prev" = "-m" ] && is_flow=true ;;
    --recovery-directory=*) recovery_dir="${arg#--recovery-directory=}" ;;
    --process-id=*) process_id="${arg#--process-id=}" ;;
    --addresses=*) addresses="${arg#--addresses=}" ;;
  esac
  case "$prev" in
    -r | --recovery-directory) recovery_dir="$arg" ;;
    -i | --process-id) process_id="$arg" ;;
    -a | --addresses) addresses="$arg" ;;
  esac
  prev="$arg"
done

if [ "$is_flow" != true ]; then
  exec "$@"
fi

if [ -n "$addresses" ] && [ -z "$process_id" ]; then
  log "-a/BYTEWAX_ADDRESSES is set but the process id (-i) is empty (on Kubernetes: the"
  log "pod-index label needs Kubernetes >= 1.28)"
  exit 2
fi

if [ -n "$recovery_dir" ]; then
  partitions="${PM_RECOVERY_PARTITIONS:-4}"
  case "$partitions" in
    '' | *[!0-9]* | 0) log "PM_RECOVERY_PARTITIONS must be a positive integer, got '$partitions'"; exit 2 ;;
  esac
  mkdir -p "$recovery_dir"
  existing="$(find "$recovery_dir" -maxdepth 1 -name 'part-*.sqlite3' | wc -l)"
  if [ "$existing" -eq 0 ] && [ -n "$addresses" ] && [ -n "$process_id" ]; then
    processes="$(printf '%s\n' "$addresses" | tr ';' '\n' | grep -c .)"
    case "$process_id" in
      '' | *[!0-9]*) log "process id must be a non-negative integer, got '$process_id'"; exit 2 ;;
    esac
    if [ "$process_id" -ge "$processes" ]; then
      log "process id $process_id is not below the $processes addresses"; exit 2
    fi
    if [ "$partitions" -lt "$processes" ]; then
      log "PM_RECOVERY_PARTITIONS=$partitions is fewer than the $processes processes"; exit 2
    fi
    staging="$recovery_dir/.init-$$"
    rm -rf "$staging"
    mkdir -p "$staging"
    python -m bytewax.recovery "$staging" "$partitions"
    kept=""
    j=0
    while [ "$j" -lt "$partitions" ]; do
      if [ $((j % processes)) -eq "$process_id" ]; then
        mv "$staging/part-$j.sqlite3" "$recovery_dir/"
        kept="$kept $j"
      fi
      j=$((j + 1))
    done
    rm -rf "$staging"
    log "process $process_id of $processes: keeping recovery partitions$kept of $partitions in $recovery_dir"
  elif [ "$existing" -eq 0 ]; then
    log "initialising $partitions recovery partitions in $recovery_dir"
    python -m bytewax.recovery "$recovery_dir" "$partitions"
  else
    log "resuming from $existing recovery partitions in $recovery_dir"
  fi
fi

migrate="${PM_POSTGRES__MIGRATE_ON_START:-true}"
if [ -n "${PM_DATABASE_URL:-}" ]; then
  case "$migrate" in
    [Ff][Aa][Ll][Ss][Ee] | 0 | [Nn][Oo] | [Oo][Ff][Ff])
      log "PM_POSTGRES__MIGRATE_ON_START=$migrate: not applying migrations" ;;
    *)
      log "applying database migrations"
      python -m connectors.migrate --database-url "$PM_DATABASE_URL" \
        --sql-dir "${PM_SQL_DIR:-/app/infra/sql}" ;;
  esac
fi

exec "$@"
