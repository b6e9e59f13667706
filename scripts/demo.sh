#!/usr/bin/env bash
# A guided tour of ef-backup on a fresh Debian 12 machine:
#   scripts/demo.sh        install what is missing, build, start a throwaway PostgreSQL with a
#                          sample database `demo` and a local S3 server, then back it up (to
#                          disk and S3), list, verify, restore it into `demo_restored` (and from
#                          S3 into `demo_from_s3`) and compare the databases
#   scripts/demo.sh stop   stop that PostgreSQL and delete the demo state
# Re-runnable: a second run reuses the running PostgreSQL, reseeds `demo` and starts with an
# empty backup directory. Env: EF_DEMO_PG_PORT (first port to try, default 55442),
# EF_DEMO_SCALE_MB (size of `demo`, default 30), PG_BIN (PostgreSQL binaries).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "demo.sh: $*" >&2; }
die() { echo "demo.sh: error: $*" >&2; exit 1; }

source "$ROOT/scripts/lib.sh"

# ---- commands --------------------------------------------------------------------------------

cmd_stop() {
  local d found=false
  for d in "$ROOT/.work/demo" "$(tmp_state demo)"; do
    [ -d "$d" ] || continue
    found=true
    pg_cluster stop "$d/pg"
    "$TESTENV/s3-server.sh" stop "$d-s3"
    rm -rf "$d" "$d-s3"
    log "removed $d"
  done
  $found || log "no demo state found (looked in $ROOT/.work/demo and $(tmp_state demo)); nothing to stop"
}

heading() { printf '\n==> %s\n' "$*"; }
# Shows the command the way a user would type it, then runs it.
ef_backup() { printf '$ ef-backup %s\n' "$*"; "$BIN" "$@"; }

# shellcheck disable=SC2317  # runs from the EXIT trap, which shellcheck does not follow
on_exit() {
  local rc=$?
  [ "$rc" -eq 0 ] || log "failed at step '$STEP' (exit $rc); PostgreSQL may still be running: scripts/demo.sh stop cleans up"
}

cmd_run() {
  STEP="setup"
  trap on_exit EXIT
  "$ROOT/scripts/setup.sh"

  STEP="build"
  local wasm
  wasm="$("$ROOT/scripts/build-policy.sh")"
  log "cargo build -p ef-backup"
  cargo build -p ef-backup
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/ef-backup"
  [ -x "$BIN" ] || die "cargo build succeeded but $BIN is missing"

  STEP="start PostgreSQL"
  find_pg_bin
  export PG_BIN
  local state backups scale="${EF_DEMO_SCALE_MB:-30}"
  state="$(state_dir demo)"
  start_cluster "$state/pg" "${EF_DEMO_PG_PORT:-55442}"

  STEP="seed"
  log "creating database demo with ~$scale MB of sample data"
  eval "$(pg_cluster seed "$state/pg" "$PG_PORT" demo "$scale")"

  STEP="start the S3 server"
  log "starting a local S3-compatible server (moto; the first run installs it, about a minute)"
  local s3_out
  s3_out="$(start_s3 "$state-s3" "${EF_DEMO_S3_PORT:-55920}" ef-demo-backups)"
  eval "$s3_out"
  export EF__AWS_ENDPOINT_URL="$AWS_ENDPOINT_URL_S3"

  # A fresh backup directory each run, so the listing and "the newest backup" are this run's.
  backups="$state/backups"
  rm -rf "$backups"; mkdir -p "$backups"
  export EF__DB_HOST EF__DB_PORT EF__DB_USER EF__DB_PASSWORD EF__DB_NAME
  export EF__BACKUP_DIR="$backups" EF__BACKUP_POLICY="$wasm"
  # ef-backup reads ./.env: run it from the backup dir, where none can be, so only the settings
  # shown here apply. It also lets `restore` take the bare file name.
  cd "$backups"

  heading "Configuration (environment variables)"
  printf '  %s\n' "EF__DB_HOST=$EF__DB_HOST" "EF__DB_PORT=$EF__DB_PORT" "EF__DB_NAME=$EF__DB_NAME" \
    "EF__DB_USER=$EF__DB_USER" "EF__DB_PASSWORD=***" "EF__BACKUP_DIR=$EF__BACKUP_DIR" "EF__BACKUP_POLICY=$EF__BACKUP_POLICY" \
    "EF__AWS_S3_BACKUP_BUCKET=$EF__AWS_S3_BACKUP_BUCKET" "EF__AWS_ACCESS_KEY_ID=$EF__AWS_ACCESS_KEY_ID" \
    "EF__AWS_SECRET_ACCESS_KEY=***" "EF__AWS_ENDPOINT_URL=$EF__AWS_ENDPOINT_URL"

  STEP="policy check"
  heading "Check the backup policy component (schedule, names, retention, responses)"
  ef_backup policy check

  STEP="backup"
  heading "Back up database demo (pg_dump, gzip) into EF__BACKUP_DIR and, streamed at the same time, to S3"
  ef_backup backup

  STEP="list"
  heading "List the backups, local and in the bucket"
  ef_backup list

  STEP="verify"
  heading "Verify the newest backup (restore it into a scratch database, compare every table with demo)"
  ef_backup verify

  STEP="restore"
  local f newest=""
  for f in "$backups"/*.sql.gz; do
    [ -f "$f" ] || continue
    if [ -z "$newest" ] || [ "$f" -nt "$newest" ]; then newest="$f"; fi
  done
  [ -n "$newest" ] || die "ef-backup backup reported success but $backups has no *.sql.gz file"
  heading "Restore the newest backup into a new database demo_restored"
  # A re-run finds the previous run's copy; --create wants to make it itself.
  PGPASSWORD="$EF__DB_PASSWORD" "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$EF__DB_USER" -d postgres \
    -c 'DROP DATABASE IF EXISTS demo_restored WITH (FORCE)' -c 'DROP DATABASE IF EXISTS demo_from_s3 WITH (FORCE)' \
    >/dev/null 2>&1 || die "could not drop the databases left by an earlier run (is PostgreSQL on port $PG_PORT up?)"
  ef_backup restore "$(basename "$newest")" --target-db demo_restored --create

  STEP="compare"
  heading "Compare demo and demo_restored (row counts and checksums per table, schema)"
  printf '$ scripts/testenv/pg-cluster.sh compare %s demo demo_restored\n' "$PG_PORT"
  pg_cluster compare "$PG_PORT" demo demo_restored

  STEP="restore from S3"
  heading "Restore the same backup straight from S3 into demo_from_s3 (streamed, no temporary file)"
  ef_backup restore --from-s3 "$(basename "$newest")" --target-db demo_from_s3 --create
  pg_cluster compare "$PG_PORT" demo demo_from_s3

  cat <<EOF

Done. PostgreSQL is still running on 127.0.0.1:$PG_PORT (state in $state), and the S3 server on
$EF__AWS_ENDPOINT_URL (bucket $EF__AWS_S3_BACKUP_BUCKET):
  PGPASSWORD=$EF__DB_PASSWORD $PG_BIN/psql -h 127.0.0.1 -p $PG_PORT -U $EF__DB_USER demo_restored
Backups: $backups
Stop both and delete the demo state: scripts/demo.sh stop
EOF
}

case "${1:-run}" in
  run)  [ $# -le 1 ] || die "usage: scripts/demo.sh [run|stop]"; cmd_run ;;
  stop) [ $# -eq 1 ] || die "usage: scripts/demo.sh [run|stop]"; cmd_stop ;;
  *) die "unknown command '$1' (usage: scripts/demo.sh [run|stop])" ;;
esac
