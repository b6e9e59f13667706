#!/usr/bin/env bash
# Restore time (recovery time): ef-backup against the obvious alternatives, measured in one run,
# interleaved, from backups of the same database.
#   bench/restore.sh [--scale S] [--rounds R]
#     --scale S   pgbench scale of the sample database (default 15), plus a jsonb table of
#                 S * 20,000 rows; created once in .work/bench-restore and reused while S matches
#     --rounds R  rounds of every method (default 3); medians are reported
# Methods, each restoring into a new, empty database:
#   ef-backup      ef-backup restore FILE --create (default --jobs: the CPU count)
#   ef-backup-j1   the same with --jobs 1 (one psql session, the dump in order)
#   zcat|psql      zcat FILE | psql (the naive pipe, from the same .sql.gz)
#   pg_restore-j2  pg_restore -j2 from a custom-format dump of the same database
#   pg_restore-j1  pg_restore from the same custom-format dump
# ef-backup restore --create creates the database it restores into (a scratch database,
# renamed into place at the end), so each other method's time includes creating its database
# too (`CREATE DATABASE restored TEMPLATE template0` from a psql run, as `createdb` would):
# the same job, timed whole. Their load alone is printed as well (`load only`).
# Wall time, CPU time (of the client side; the server's work is not in it) and peak RSS come
# from GNU time; the server's CPU time from /proc (the benchmark's server runs here). Their sum
# over the cores is the floor no schedule can beat on this machine: how near each method comes
# to it shows what is left to gain by keeping the cores busy, and what only less work can gain.
# Peak RSS of ef-backup is also measured on a database a fifth the size, to show it does not
# grow with the database.
# `bench/restore.sh stop` stops the benchmark's PostgreSQL and deletes its state.
# shellcheck disable=SC2016  # the sh -c scripts below expand their own arguments
set -euo pipefail
# A failed step inside $(…) stops the benchmark too.
shopt -s inherit_errexit

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "bench: $*" >&2; }
die() { echo "bench: error: $*" >&2; exit 1; }
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

SCALE=15 ROUNDS=3
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) SCALE="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    stop) state="$(state_dir bench-restore)"; pg_cluster stop "$state/pg"; rm -rf "$state"; exit 0 ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done
[[ "$SCALE" =~ ^[1-9][0-9]*$ && "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--scale and --rounds take positive numbers"

"$ROOT/scripts/setup.sh"
WASM="$("$ROOT/scripts/build-policy.sh")"
log "cargo build --release -p ef-backup"
cargo build --release -p ef-backup >&2
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/ef-backup"
[ -x /usr/bin/time ] || die "GNU time missing (apt-get install time)"

find_pg_bin
STATE="$(state_dir bench-restore)"
start_cluster "$STATE/pg" "${EF_BENCH_PG_PORT:-55462}"
export PGHOST=127.0.0.1 PGPORT="$PG_PORT" PGUSER=postgres PGPASSWORD="$PG_CLUSTER_PASSWORD"
export EF__DB_HOST=127.0.0.1 EF__DB_PORT="$PG_PORT" EF__DB_USER=postgres EF__DB_PASSWORD="$PG_CLUSTER_PASSWORD"
export EF__BACKUP_POLICY="$WASM"
PSQL=("$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1)

seed() {  # $1 = database, $2 = pgbench scale
  "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"
  "$PG_BIN/pgbench" -i -q -s "$2" "$1" >&2
  "${PSQL[@]}" -d "$1" -c "CREATE TABLE docs (id bigint PRIMARY KEY, doc jsonb NOT NULL, created timestamptz NOT NULL)" \
    -c "INSERT INTO docs SELECT g, jsonb_build_object('id', g, 'name', md5(g::text), 'tags', jsonb_build_array(g % 7, g % 11), 'note', repeat('x', g % 50)), '2025-01-01'::timestamptz + g * interval '1 minute' FROM generate_series(1, $2 * 20000) g" \
    -c "CREATE INDEX docs_created ON docs (created)" -c "VACUUM ANALYZE"
}

OUT="$STATE/out"
if [ "$(cat "$STATE/seeded" 2>/dev/null)" != "$SCALE" ]; then
  log "seeding databases (pgbench scale $SCALE and $(( (SCALE + 4) / 5 )); once, reused by later runs)"
  seed bench "$SCALE"
  seed bench_small $(( (SCALE + 4) / 5 ))
  rm -rf "$STATE/backups"; mkdir -p "$STATE/backups/big" "$STATE/backups/small"
  EF__DB_NAME=bench EF__BACKUP_DIR="$STATE/backups/big" "$BIN" backup >/dev/null
  EF__DB_NAME=bench_small EF__BACKUP_DIR="$STATE/backups/small" "$BIN" backup >/dev/null
  "$PG_BIN/pg_dump" -Fc -f "$STATE/backups/bench.dump" bench
  echo "$SCALE" > "$STATE/seeded"
fi
# The database's own dump; a backup run also writes the server's globals beside it.
FILE="$(ls "$STATE"/backups/big/bench_backup_*.sql.gz)"
SMALL="$(ls "$STATE"/backups/small/bench_small_backup_*.sql.gz)"
CUSTOM="$STATE/backups/bench.dump"
rm -rf "$OUT"; mkdir -p "$OUT"

# Every run starts from the same server state: no database from the last run, and no checkpoint
# of its writes pending (one landing mid-run costs that run a second here).
fresh() { "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS restored WITH (FORCE)" -c "CHECKPOINT"; }

# One measurement of a command: prints "wall cpu rss_kb".
measure() {
  /usr/bin/time -o "$OUT/time" -f '%e %U %S %M' "$@" >"$OUT/stdout" 2>"$OUT/stderr" \
    || { tail -n 5 "$OUT/stderr" >&2; die "failed: $*"; }
  local wall user sys rss; read -r wall user sys rss < "$OUT/time"
  echo "$wall $(awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}') $rss"
}

# The other methods' database, created the way a user would before loading into it; prints
# "wall cpu rss_kb" of that step.
create_db() { measure "${PSQL[@]}" -d postgres -c "CREATE DATABASE restored TEMPLATE template0"; }

# Two measurements of one method's steps as one: times and CPU add up, peak RSS is the larger.
plus() { awk -v a="$1" -v b="$2" 'BEGIN {split(a, x, " "); split(b, y, " "); printf "%.2f %.2f %d\n", x[1] + y[1], x[2] + y[2], (x[3] > y[3] ? x[3] : y[3])}'; }

# CPU seconds the benchmark's server has used so far: the postmaster, its children now running,
# and those that ended (the postmaster's reaped-children time). The server runs on this machine.
server_cpu() {
  local pm; pm="$(head -n 1 "$STATE/pg/data/postmaster.pid")"
  # A process may end while this reads: its file is then gone, which is fine.
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pm="$pm" -v hz="$(getconf CLK_TCK)" '
    {pid = $1; sub(/^.*\) /, "")}  # from here $1 is the state, $2 the parent, $12.. the times
    pid == pm {t += $12 + $13 + $14 + $15}
    $2 == pm {t += $12 + $13}
    END {printf "%.2f\n", t / hz}'
}

run_method() {  # $1 = method; prints "wall cpu rss_kb load_wall server_cpu" (load_wall: without creating the database)
  fresh
  local created loaded s0 s1
  s0="$(server_cpu)"
  case "$1" in
    ef-backup) loaded="$(EF__DB_NAME=bench measure "$BIN" restore "$FILE" --target-db restored --create)" ;;
    ef-backup-j1) loaded="$(EF__DB_NAME=bench measure "$BIN" restore "$FILE" --target-db restored --create --jobs 1)" ;;
    ef-backup-small) loaded="$(EF__DB_NAME=bench measure "$BIN" restore "$SMALL" --target-db restored --create)" ;;
    zcat\|psql)
      created="$(create_db)"
      loaded="$(measure sh -c 'zcat "$0" | "$1" -X -q -v ON_ERROR_STOP=1 -d restored' "$FILE" "$PG_BIN/psql")" ;;
    pg_restore-j*)
      created="$(create_db)"
      loaded="$(measure "$PG_BIN/pg_restore" -j "${1#pg_restore-j}" -d restored "$CUSTOM")" ;;
  esac
  s1="$(server_cpu)"
  # ef-backup creates its database within its own run.
  echo "$(plus "${created:-0 0 0}" "$loaded") ${loaded%% *} $(awk -v a="$s0" -v b="$s1" 'BEGIN {printf "%.2f", b - a}')"
}

methods=(ef-backup ef-backup-j1 "zcat|psql" pg_restore-j2 pg_restore-j1 ef-backup-small)
declare -A results
for r in $(seq 1 "$ROUNDS"); do
  for m in "${methods[@]}"; do
    res="$(run_method "$m")"
    results[$m]+="$res"$'\n'
    log "round $r/$ROUNDS $m: $res (wall s, cpu s, peak RSS KiB, load-only wall s, server cpu s)"
  done
done
fresh

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
col() { printf '%s' "${results[$1]}" | awk -v c="$2" 'NF {print $c}' | median; }

echo
echo "ef-backup restore benchmark: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "database: pgbench scale $SCALE + docs (jsonb); backup $(awk -v b="$(stat -c %s "$FILE")" 'BEGIN {printf "%.1f MB", b/1e6}') gzip, $(awk -v b="$(zcat "$FILE" | wc -c)" 'BEGIN {printf "%.1f MB", b/1e6}') of SQL; custom-format dump $(awk -v b="$(stat -c %s "$CUSTOM")" 'BEGIN {printf "%.1f MB", b/1e6}'); $ROUNDS rounds, medians"
CORES="$(nproc)"
printf '%-16s %9s %9s %10s %11s %12s %9s\n' method wall_s cpu_s rss_MiB load_only_s server_cpu_s floor_s
for m in "${methods[@]}"; do
  printf '%-16s %9.2f %9.2f %10.1f %11.2f %12.2f %9.2f\n' "$m" "$(col "$m" 1)" "$(col "$m" 2)" "$(awk -v k="$(col "$m" 3)" 'BEGIN {print k/1024}')" \
    "$(col "$m" 4)" "$(col "$m" 5)" "$(awk -v c="$(col "$m" 2)" -v s="$(col "$m" 5)" -v n="$CORES" 'BEGIN {print (c + s) / n}')"
done
echo "(ef-backup-small: the same restore of a database a fifth the size, for peak RSS;"
echo " wall_s of zcat|psql and pg_restore includes CREATE DATABASE, load_only_s does not;"
echo " server_cpu_s: CPU time of the server's processes during the run; floor_s: client plus server"
echo " CPU time over $CORES cores, the wall time if every core were busy from start to end)"
echo

# Ratios of one round's times: the machine's speed drifts between rounds, less within one.
paired() {  # $1, $2 = methods; prints "median min max" of $1's wall time over $2's, round by round
  paste <(printf '%s' "${results[$1]}" | awk 'NF {print $1}') <(printf '%s' "${results[$2]}" | awk 'NF {print $1}') \
    | awk '{print $1 / $2}' | sort -n \
    | awk '{a[NR] = $1} END {printf "%.2f %.2f %.2f\n", (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2), a[1], a[NR]}'
}
read -r pz pz_lo pz_hi <<< "$(paired ef-backup 'zcat|psql')"
read -r pp pp_lo pp_hi <<< "$(paired ef-backup pg_restore-j2)"
awk -v ef="$(col ef-backup 1)" -v z="$(col 'zcat|psql' 1)" -v p2="$(col pg_restore-j2 1)" -v j1="$(col ef-backup-j1 1)" \
    -v zl="$(col 'zcat|psql' 4)" -v p2l="$(col pg_restore-j2 4)" \
    -v rb="$(col ef-backup 3)" -v rs="$(col ef-backup-small 3)" \
    -v pz="$pz" -v pz_lo="$pz_lo" -v pz_hi="$pz_hi" -v pp="$pp" -v pp_lo="$pp_lo" -v pp_hi="$pp_hi" 'BEGIN {
  printf "ef-backup time / zcat|psql time:     %.2fx   (goal <= 0.70)\n", ef/z
  printf "ef-backup time / pg_restore -j2 time: %.2fx   (goal <= 1.00)\n", ef/p2
  printf "  the same, round by round:           %.2fx (%.2f-%.2f) and %.2fx (%.2f-%.2f) (median, range)\n", pz, pz_lo, pz_hi, pp, pp_lo, pp_hi
  printf "  the same against their load only:   %.2fx and %.2fx (their CREATE DATABASE not timed)\n", ef/zl, ef/p2l
  printf "pg_restore -j2 time / zcat|psql time: %.2fx\n", p2/z
  printf "ef-backup --jobs 1 / zcat|psql time:  %.2fx\n", j1/z
  printf "ef-backup peak RSS, big / small db:   %.2fx   (flat: about 1)\n", rb/rs
}'
rm -rf "$OUT"
