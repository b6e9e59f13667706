#!/usr/bin/env bash
# Throwaway PostgreSQL cluster for tests and demos.
#   pg-cluster.sh start DIR PORT               create (if absent) + start; prints EF__DB_* exports
#   pg-cluster.sh stop DIR                     stop (no-op if not running)
#   pg-cluster.sh seed DIR PORT DBNAME SCALE   (re)create DBNAME with ~SCALE MB of sample data
#   pg-cluster.sh compare PORT DB1 DB2         per-table count+checksum, schema fingerprint; OK (exit 0)
#                                              or the differing lines (exit 1); errors exit 2
# Env: PGUSER/PGPASSWORD (superuser, default postgres/postgres), PG_BIN (binaries dir, optional),
#      PG_OS_USER (OS user owning DIR when run as root, default postgres), SEED_LARGE_OBJECTS=false.
# Listens on 127.0.0.1:PORT and a unix socket in DIR; scram-sha-256 auth; fsync=off.
# `A && B || die` is meant: die when either test fails.
# shellcheck disable=SC2015
set -euo pipefail

HERE="$(dirname "$(realpath "${BASH_SOURCE[0]}")")"   # seed-app.sql and compare.sql live here
die() { echo "pg-cluster.sh: error: $*" >&2; exit 2; }
log() { echo "pg-cluster.sh: $*" >&2; }
DB_USER="${PGUSER:-postgres}"
DB_PASS="${PGPASSWORD:-postgres}"
export PGUSER="$DB_USER" PGPASSWORD="$DB_PASS" PGCONNECT_TIMEOUT=5 PGOPTIONS="-c client_min_messages=warning"

newest_bin() { printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n1; }  # literal glob if none: caller checks initdb

find_bin() {
  if [ -n "${PG_BIN:-}" ]; then [ -x "$PG_BIN/initdb" ] || die "PG_BIN=$PG_BIN has no initdb"; return; fi
  PG_BIN="$(newest_bin)"
  if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
    log "PostgreSQL not found; installing it: apt-get install -y postgresql"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2 \
      || die "apt-get install postgresql failed"
    PG_BIN="$(newest_bin)"
  fi
}

# initdb/postgres refuse to run as root: run server-side commands as an unprivileged OS user.
RUN=()
pick_user() {
  [ "$(id -u)" = 0 ] || return 0
  OS_USER="${PG_OS_USER:-postgres}"
  if ! id -u "$OS_USER" >/dev/null 2>&1; then
    log "creating system user $OS_USER"
    useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$OS_USER" || die "useradd $OS_USER failed"
  fi
  RUN=(runuser -u "$OS_USER" --)
}

as_owner() { "${RUN[@]}" "$@"; }
need_port() { [[ "${1:-}" =~ ^[0-9]+$ ]] && [ "$1" -gt 0 ] && [ "$1" -lt 65536 ] || die "invalid PORT '${1:-}'"; }
psql_() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" "$@"; }
print_env() {
  printf 'export EF__DB_HOST=127.0.0.1\nexport EF__DB_PORT=%s\nexport EF__DB_USER=%q\nexport EF__DB_PASSWORD=%q\nexport EF__DB_NAME=%q\n' \
    "$PORT" "$DB_USER" "$DB_PASS" "$1"
}
running() { [ -f "$DATA/postmaster.pid" ] && as_owner "$PG_BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

cmd_start() {
  need_port "$PORT"
  [ ${#DIR} -le 80 ] || die "DIR path too long for a unix socket (max 80 chars): $DIR"
  mkdir -p "$DIR" 2>/dev/null || die "cannot create $DIR"
  [ -n "$OS_USER" ] && chown "$OS_USER:" "$DIR"
  as_owner test -w "$DIR" -a -x "$DIR" || die "$DIR not writable by ${OS_USER:-$(id -un)} (check parent dir permissions)"
  if [ ! -f "$DATA/PG_VERSION" ]; then
    log "initdb in $DATA ($("$PG_BIN/postgres" --version))"
    local pw="$DIR/.pwfile"
    (umask 077; printf '%s\n' "$DB_PASS" > "$pw"); [ -n "$OS_USER" ] && chown "$OS_USER:" "$pw"
    as_owner "$PG_BIN/initdb" -D "$DATA" -U "$DB_USER" --pwfile="$pw" --auth=scram-sha-256 \
      --encoding=UTF8 --no-locale --no-instructions >"$DIR/initdb.log" 2>&1 \
      || { rm -f "$pw"; cat "$DIR/initdb.log" >&2; die "initdb failed"; }
    rm -f "$pw"
    echo "include_if_exists = 'pg-cluster.conf'" | as_owner tee -a "$DATA/postgresql.conf" >/dev/null
  fi
  if running; then
    local cur; cur="$(sed -n 4p "$DATA/postmaster.pid")"
    [ "$cur" = "$PORT" ] || die "cluster in $DIR already running on port $cur (stop it first)"
    log "already running on port $PORT"
  else
    as_owner tee "$DATA/pg-cluster.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DIR'
password_encryption = 'scram-sha-256'
fsync = off
synchronous_commit = off
full_page_writes = off
max_wal_size = '1GB'
EOF
    as_owner "$PG_BIN/pg_ctl" -D "$DATA" -l "$DIR/postgresql.log" -w -t 60 start >/dev/null \
      || { tail -n 20 "$DIR/postgresql.log" >&2 || true; die "server did not start (port $PORT in use?)"; }
  fi
  local i
  for i in $(seq 1 60); do
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" && break
    [ "$i" = 60 ] && die "server not ready after 30s"; sleep 0.5
  done
  psql_ -d postgres -c 'select 1' >/dev/null || die "cannot log in as $DB_USER (cluster created with another password?)"
  log "ready on 127.0.0.1:$PORT (socket dir $DIR)"
  print_env postgres
}

cmd_stop() {
  [ -f "$DATA/PG_VERSION" ] || { log "no cluster in $DIR"; return 0; }
  if running; then as_owner "$PG_BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null; log "stopped"; else log "not running"; fi
}

cmd_seed() {
  local db="$1" mb="$2"
  [[ "$mb" =~ ^[0-9]+$ ]] && [ "$mb" -ge 1 ] || die "invalid SCALE '$mb' (MB, integer >= 1)"
  [[ "$db" =~ ^[a-z_][a-z0-9_]*$ ]] || die "DBNAME must match [a-z_][a-z0-9_]*"
  need_port "$PORT"
  psql_ -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
  # ~60% pgbench tables (scale 1 = 100k accounts ~ 15 MB), rest app schema (~1 KB per event row)
  local pmb=$(( mb * 6 / 10 )) s=1 keep=0
  if [ "$pmb" -ge 15 ]; then s=$(( pmb / 15 )); else keep=$(( pmb * 100000 / 15 + 1000 )); fi
  "$PG_BIN/pgbench" -q -i -s "$s" -I dtGvp -h 127.0.0.1 -p "$PORT" "$db" >/dev/null 2>&1 || die "pgbench -i failed"
  [ "$keep" -gt 0 ] && psql_ -d "$db" -c "DELETE FROM pgbench_accounts WHERE aid > $keep" -c "VACUUM pgbench_accounts"
  local used; used="$(psql_ -d "$db" -At -c "select sum(pg_total_relation_size(c.oid))/1048576 from pg_class c where relname like 'pgbench%' and relkind='r'")"
  local rows=$(( (mb - ${used%.*}) * 1000 )); [ "$rows" -ge 1000 ] || rows=1000
  psql_ -d "$db" -v rows="$rows" -v lo="${SEED_LARGE_OBJECTS:-true}" -f "$HERE/seed-app.sql" >/dev/null
  log "seeded $db: $(psql_ -d "$db" -At -c "select pg_size_pretty(pg_database_size(current_database()))") on disk (pgbench scale $s, $rows events)"
  print_env "$db"
}

cmd_compare() {
  local a="$1" b="$2" fa fb
  need_port "$PORT"
  local sql="$HERE/compare.sql"
  fa="$(psql_ -d "$a" -At -F ' ' -f "$sql")" || die "query on $a failed"
  fb="$(psql_ -d "$b" -At -F ' ' -f "$sql")" || die "query on $b failed"
  if [ "$fa" = "$fb" ]; then
    echo "OK: $a and $b match ($(grep -c '^table ' <<<"$fa") tables, $(wc -l <<<"$fa") items)"
  else
    echo "DIFFERENT: $a vs $b"; diff <(echo "$fa") <(echo "$fb") | grep '^[<>]' || true; return 1
  fi
}

[ $# -ge 1 ] || die "usage: $0 start DIR PORT | stop DIR | seed DIR PORT DBNAME SCALE_MB | compare PORT DB1 DB2"
CMD="$1"; shift
find_bin
OS_USER=""
case "$CMD" in
  start|stop|seed)
    [ $# -ge 1 ] || die "$CMD: DIR required"
    DIR="$(realpath -m "$1")"; DATA="$DIR/data"; PORT="${2:-}"; pick_user ;;
esac
case "$CMD" in
  start)   [ $# -eq 2 ] || die "usage: start DIR PORT"; cmd_start ;;
  stop)    [ $# -eq 1 ] || die "usage: stop DIR"; cmd_stop ;;
  seed)    [ $# -eq 4 ] || die "usage: seed DIR PORT DBNAME SCALE_MB"; cmd_seed "$3" "$4" ;;
  compare) [ $# -eq 3 ] || die "usage: compare PORT DB1 DB2"; PORT="$1"; cmd_compare "$2" "$3" ;;
  *) die "unknown command '$CMD'" ;;
esac
