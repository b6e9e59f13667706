#!/usr/bin/env bash
# A guided tour of ef-backup on a fresh Debian 12 machine, in a couple of minutes:
#   scripts/demo.sh          install what is missing, build, start a throwaway PostgreSQL with a
#                            EuraFlow-like sample database and a local S3 server, run
#                            `ef-backup serve`, back up through the API, show status and the
#                            backups, restore and verify, run a restore drill, show a failed
#                            backup and its recovery arriving at a (local, signed) webhook and
#                            the run history, back up the whole server and restore it onto a
#                            new one, swap the policy while the service runs, then stop
#                            everything it started
#   scripts/demo.sh --keep   the same, but leave the stack running and print how to use it
#   scripts/demo.sh stop     stop what a --keep run left running and delete the demo state
# Env: EF_DEMO_PG_PORT (first port to try, default 55442), EF_DEMO_SCALE_MB (size of the
# sample database, default 30), PG_BIN (PostgreSQL binaries).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "demo.sh: $*" >&2; }
die() { echo "demo.sh: error: $*" >&2; exit 1; }

source "$ROOT/scripts/lib.sh"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
# Shows a command the way a user would type it, then runs it.
show() { printf '$ %s\n' "$*"; "$@"; }
ef_backup() { printf '$ ef-backup %s\n' "$*"; "$BIN" "$@"; }
pretty() { python3 -m json.tool --no-ensure-ascii; }

STATE=""
SERVE_PID=""
KEEP=false

stop_all() {
  local d="$1"
  if [ -f "$d/serve.pid" ]; then
    local pid; pid="$(cat "$d/serve.pid")"
    if kill -0 "$pid" 2>/dev/null && grep -qa ef-backup "/proc/$pid/cmdline" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$d/serve.pid"
  fi
  if [ -f "$d/webhook.pid" ]; then kill "$(cat "$d/webhook.pid")" 2>/dev/null || true; rm -f "$d/webhook.pid"; fi
  pg_cluster stop "$d/pg" >/dev/null 2>&1 || true
  pg_cluster stop "$d/pg2" >/dev/null 2>&1 || true
  "$TESTENV/s3-server.sh" stop "$d-s3" >/dev/null 2>&1 || true
}

cmd_stop() {
  local d found=false
  for d in "$ROOT/.work/demo" "$(tmp_state demo)"; do
    [ -d "$d" ] || continue
    found=true
    stop_all "$d"
    rm -rf "$d"
    log "stopped the demo and removed $d (the S3 server's venv stays in $d-s3 for the next run)"
  done
  $found || log "no demo state found (looked in $ROOT/.work/demo and $(tmp_state demo)); nothing to stop"
}

# shellcheck disable=SC2317  # runs from the EXIT trap
on_exit() {
  local rc=$?
  if [ -n "$STATE" ] && { ! $KEEP || [ "$rc" -ne 0 ]; }; then
    stop_all "$STATE"
    [ "$rc" -eq 0 ] || log "failed at step '$STEP' (exit $rc); everything it started is stopped. Logs: $STATE/serve.log, $STATE/pg/postgresql.log"
  fi
}

api() {  # METHOD PATH: curl with the admin token, JSON pretty-printed
  # shellcheck disable=SC2016  # the $EF__ADMIN_TOKEN shown is for the reader to type
  printf '$ curl -s -X %s -H "Authorization: Bearer $EF__ADMIN_TOKEN" http://%s%s\n' "$1" "$EF__HTTP_ADDR" "$2"
  curl -s -X "$1" -H "Authorization: Bearer $EF__ADMIN_TOKEN" "http://$EF__HTTP_ADDR$2" | tee "$STATE/last.json" | pretty
}

wait_http() {
  for _ in $(seq 1 200); do
    curl -s -o /dev/null "http://$EF__HTTP_ADDR/healthz" && return 0
    kill -0 "$SERVE_PID" 2>/dev/null || { tail -n 20 "$STATE/serve.log" >&2; die "ef-backup serve exited"; }
    sleep 0.1
  done
  die "ef-backup serve did not answer on $EF__HTTP_ADDR (see $STATE/serve.log)"
}

json_field() {  # KEY... of the last API answer
  python3 -c 'import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2:]:
    v = v[k]
print(v)' "$STATE/last.json" "$@"
}

cmd_run() {
  STEP="setup"
  trap on_exit EXIT
  say "Installing what is missing (PostgreSQL, the wasm toolchain...) and building ef-backup and two policies"
  "$ROOT/scripts/setup.sh"
  local wasm gfs
  wasm="$("$ROOT/scripts/build-policy.sh")"
  gfs="$("$ROOT/scripts/build-policy.sh" "$ROOT/examples/policies/gfs")"
  cargo build -q -p ef-backup
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/ef-backup"
  [ -x "$BIN" ] || die "cargo build succeeded but $BIN is missing"

  STEP="start PostgreSQL"
  find_pg_bin
  export PG_BIN
  STATE="$(state_dir demo)"
  stop_all "$STATE"
  say "Starting a throwaway PostgreSQL with a EuraFlow-like database 'demo' (orders, customers in Chinese, jsonb, large objects...)"
  start_cluster "$STATE/pg" "${EF_DEMO_PG_PORT:-55442}"
  eval "$(pg_cluster seed "$STATE/pg" "$PG_PORT" demo "${EF_DEMO_SCALE_MB:-30}")"

  STEP="start the S3 server"
  say "Starting a local S3-compatible server (moto, with real authentication; the first run installs it, about a minute)"
  eval "$(start_s3 "$STATE-s3" "${EF_DEMO_S3_PORT:-55920}" ef-demo-backups)"
  export EF__AWS_ENDPOINT_URL="$AWS_ENDPOINT_URL_S3"

  STEP="start a webhook receiver"
  say "Starting a local webhook receiver standing in for your alerting (it prints what ef-backup sends, and checks the signature)"
  local hook_port; hook_port="$(free_port 58090)"
  cat > "$STATE/webhook.py" <<'PY'
import hashlib, hmac, http.server, json, sys
secret = sys.argv[2].encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        want = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        msg = json.loads(body)
        ok = hmac.compare_digest(want, self.headers.get("X-EF-Backup-Signature", ""))
        with open(sys.argv[3], "a") as log:
            log.write(f"[{msg['event']}] {msg['subject']} (signature {'valid' if ok else 'INVALID'})\n    {msg['body'].replace(chr(10), chr(10) + '    ')}\n")
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
  local hook_secret; hook_secret="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
  : > "$STATE/webhook.log"
  python3 "$STATE/webhook.py" "$hook_port" "$hook_secret" "$STATE/webhook.log" &
  echo $! > "$STATE/webhook.pid"
  export EF__NOTIFY_WEBHOOK_URL="http://127.0.0.1:$hook_port/hook" EF__NOTIFY_WEBHOOK_SECRET="$hook_secret"

  STEP="start ef-backup serve"
  local backups="$STATE/backups"
  rm -rf "$backups"; mkdir -p "$backups"
  # The service runs the policy from this file; swapping the file swaps the policy.
  cp "$wasm" "$STATE/policy.wasm"
  export EF__DB_HOST EF__DB_PORT EF__DB_USER EF__DB_PASSWORD EF__DB_NAME
  export EF__BACKUP_DIR="$backups" EF__BACKUP_POLICY="$STATE/policy.wasm" EF__STATE_DIR="$STATE/state"
  EF__ADMIN_TOKEN="$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
  EF__HTTP_ADDR="127.0.0.1:$(free_port 58080)"
  export EF__ADMIN_TOKEN EF__HTTP_ADDR
  say "Starting the service with a freshly generated admin token (EF__ADMIN_TOKEN); its log goes to $STATE/serve.log"
  (cd "$STATE" && exec "$BIN" serve) >"$STATE/serve.log" 2>&1 &
  SERVE_PID=$!
  echo "$SERVE_PID" > "$STATE/serve.pid"
  wait_http
  sed 's/^/    /' "$STATE/serve.log"

  STEP="manual backup"
  say "Asking the service for a backup, as the EuraFlow admin UI does: pg_dump → gzip on all cores → disk, streamed to S3 at the same time"
  api POST /api/ef/v1/backup/manual
  local first; first="$(json_field data backup_file)"

  STEP="status"
  say "The status endpoint: backups on disk, S3, the schedule (01:00 and 13:00 Beijing time), the last and next run"
  api GET /api/ef/v1/backup/status

  STEP="list"
  say "The same backup, on disk and in the bucket"
  ef_backup list

  STEP="restore"
  say "Restoring it into a new database 'demo_restored' (into a scratch database first, renamed into place only when complete)"
  PGPASSWORD="$EF__DB_PASSWORD" PGOPTIONS='-c client_min_messages=warning' "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$EF__DB_USER" -d postgres \
    -c 'DROP DATABASE IF EXISTS demo_restored WITH (FORCE)' >/dev/null
  ef_backup restore --from-s3 "$first" --target-db demo_restored --create

  STEP="verify"
  say "Proving the backup: restore into a scratch database and compare every table with the live one"
  ef_backup verify "$first"

  STEP="verify offline"
  say "Checking the copy in the bucket against its manifest, without a database: SHA-256, complete, every table's rows and content hash"
  ef_backup verify --offline --from-s3 "$first"

  STEP="drill"
  say "A restore drill: the backup restored on a throwaway PostgreSQL that ef-backup starts itself (never the production server) and checked against its manifest, row for row"
  ef_backup drill "$first"

  STEP="notifications"
  say "A backup that fails (the database refuses connections for a moment) is told to the webhook, signed; the next good one says it recovered"
  psql_demo() { PGPASSWORD="$EF__DB_PASSWORD" PGOPTIONS='-c client_min_messages=warning' "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$EF__DB_USER" -d postgres -c "$1" >/dev/null; }
  psql_demo 'ALTER DATABASE demo ALLOW_CONNECTIONS false'
  api POST /api/ef/v1/backup/manual
  psql_demo 'ALTER DATABASE demo ALLOW_CONNECTIONS true'
  sleep 1  # names carry the second
  api POST /api/ef/v1/backup/manual >/dev/null
  for _ in $(seq 1 50); do grep -q 'backup-succeeded' "$STATE/webhook.log" && break; sleep 0.2; done
  echo "what the webhook received:"
  sed 's/^/    /' "$STATE/webhook.log"

  STEP="history"
  say "The run history (backups, the drill, every notification), kept across restarts"
  ef_backup history --limit 12

  STEP="whole server"
  say "Backing up the whole server in one run: the roles and tablespaces (pg_dumpall --globals-only) first, then every database on its own (EF__DB_NAMES=*)"
  PGPASSWORD="$EF__DB_PASSWORD" PGOPTIONS='-c client_min_messages=warning' "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$EF__DB_USER" -d postgres \
    -c 'DROP DATABASE IF EXISTS crm WITH (FORCE)' -c 'DROP ROLE IF EXISTS crm_owner' \
    -c "CREATE ROLE crm_owner LOGIN PASSWORD 'crm-demo-pw'" -c "ALTER ROLE crm_owner SET work_mem = '16MB'" \
    -c 'CREATE DATABASE crm OWNER crm_owner' >/dev/null
  PGPASSWORD="$EF__DB_PASSWORD" "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$EF__DB_USER" -d crm \
    -c "CREATE TABLE contacts AS SELECT i AS id, '联系人 ' || i AS name FROM generate_series(1, 1000) i" -c 'ALTER TABLE contacts OWNER TO crm_owner' >/dev/null
  printf '$ EF__DB_NAME= EF__DB_NAMES=%s EF__DB_EXCLUDE=demo_restored ef-backup backup --no-s3\n' "'*'"
  EF__STATE_DIR="$STATE/cli-state" EF__DB_NAME='' EF__DB_NAMES='*' EF__DB_EXCLUDE=demo_restored "$BIN" backup --no-s3 2>/dev/null
  show ls "$backups"

  STEP="disaster recovery"
  say "Disaster recovery: the server is gone; a second, empty PostgreSQL gets that whole run back with restore --all (roles first, then every database)"
  local label old_env new_port
  # The label of that run's globals: the old server's identity, in the name of its globals backup.
  label="$(basename "$(ls -t "$backups"/*_globals_* | head -n 1)")"; label="${label%%_globals_*}"
  old_env="$(declare -p PG_PORT EF__DB_HOST EF__DB_PORT EF__DB_USER EF__DB_PASSWORD EF__DB_NAME)"
  # Brand-new every time: initdb, nothing in it but its superuser.
  pg_cluster stop "$STATE/pg2" >/dev/null 2>&1 || true
  rm -rf "$STATE/pg2"
  start_cluster "$STATE/pg2" "${EF_DEMO_PG2_PORT:-55462}"
  new_port="$PG_PORT"
  eval "$old_env"
  printf '$ EF__DB_PORT=%s EF__DB_NAME= EF__DB_NAMES=%s ef-backup restore --all --label %s\n' "$new_port" "'*'" "$label"
  EF__STATE_DIR="$STATE/cli-state" EF__DB_PORT="$new_port" EF__DB_NAME='' EF__DB_NAMES='*' "$BIN" restore --all --label "$label" 2>/dev/null
  say "The new server's databases, and proof that 'demo' there equals its backup (verify: restore into a scratch database, compare every table)"
  PGPASSWORD="$EF__DB_PASSWORD" "$PG_BIN/psql" -X -h 127.0.0.1 -p "$new_port" -U "$EF__DB_USER" -d postgres \
    -c "SELECT datname, pg_get_userbyid(datdba) AS owner FROM pg_database WHERE NOT datistemplate ORDER BY 1"
  local set_dump; set_dump="$(find "$backups" -maxdepth 1 -name 'demo_backup_*.sql.gz' -printf '%f\n' | sort | tail -n 1)"
  EF__STATE_DIR="$STATE/cli-state" EF__DB_PORT="$new_port" "$BIN" verify "$set_dump" 2>/dev/null
  pg_cluster stop "$STATE/pg2" >/dev/null 2>&1 || true

  STEP="swap the policy"
  say "Swapping in another policy while the service keeps running: grandfather-father-son retention, names with the database in them, English messages"
  show cp "$gfs" "$STATE/policy.wasm.new"
  show mv "$STATE/policy.wasm.new" "$STATE/policy.wasm"
  local want; want="$(sha256sum "$gfs" | cut -d' ' -f1)"
  for _ in $(seq 1 100); do
    curl -s -H "Authorization: Bearer $EF__ADMIN_TOKEN" "http://$EF__HTTP_ADDR/api/ef/v1/backup/status" | grep -q "$want" && break
    sleep 0.2
  done
  grep 'policy reloaded' "$STATE/serve.log" | tail -n 1 | sed 's/^/    /'
  sleep 1  # names carry the second
  api POST /api/ef/v1/backup/manual
  echo "(before the swap the backup was called $first)"

  if $KEEP; then
    cat <<EOF

The stack keeps running (scripts/demo.sh stop ends it):
  export EF__ADMIN_TOKEN=$EF__ADMIN_TOKEN
  curl -s -X POST -H "Authorization: Bearer \$EF__ADMIN_TOKEN" http://$EF__HTTP_ADDR/api/ef/v1/backup/manual
  curl -s -H "Authorization: Bearer \$EF__ADMIN_TOKEN" http://$EF__HTTP_ADDR/api/ef/v1/backup/status
  curl -s http://$EF__HTTP_ADDR/metrics
  PGPASSWORD=$EF__DB_PASSWORD $PG_BIN/psql -h 127.0.0.1 -p $PG_PORT -U $EF__DB_USER demo_restored
Service log: $STATE/serve.log   Backups: $backups   Bucket: $EF__AWS_S3_BACKUP_BUCKET at $EF__AWS_ENDPOINT_URL
EOF
  else
    say "Stopping the service (SIGTERM, a clean shutdown), PostgreSQL and the S3 server"
    stop_all "$STATE"
    tail -n 2 "$STATE/serve.log" | sed 's/^/    /'
    cat <<EOF

Done; nothing is left running. The files stay for you to look at:
  backups:     $backups
  service log: $STATE/serve.log
Run 'scripts/demo.sh --keep' to keep the stack up and try the API yourself.
EOF
  fi
}

case "${1:-}" in
  "") cmd_run ;;
  --keep) KEEP=true; cmd_run ;;
  stop) [ $# -eq 1 ] || die "usage: scripts/demo.sh [--keep|stop]"; cmd_stop ;;
  *) die "unknown argument '$1' (usage: scripts/demo.sh [--keep|stop])" ;;
esac
