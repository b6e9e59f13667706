#!/usr/bin/env bash
# Backup throughput: ef-backup against the obvious alternatives, measured in one run,
# interleaved, on the same database.
#   bench/backup.sh [--size-mb N] [--rounds R] [--levels] [--s3]
#     --size-mb N  size of the sample database on disk (default 760, about 500 MB of plain SQL);
#                  created once in .work/bench and reused while its size matches
#     --rounds R   rounds of every method (default 3); medians are reported
#     --levels     also run ef-backup at every EF__BACKUP_GZIP_LEVEL (1-9): size and time
#     --s3         also run ef-backup with the S3 upload on, against two S3 servers started here:
#                  moto (the test suite's store) and Garage (a production store; bench/garage.sh
#                  builds it once, ~6 min), and report each one's wall time against the
#                  local-only backup
# shellcheck disable=SC2016  # the sh -c scripts below expand their own arguments
# Methods: ef-backup backup (release build), pg_dump | gzip -9, pg_dump | pigz -9, and bare
# pg_dump > /dev/null (the limit). Wall time, CPU time and peak RSS come from GNU time.
# `bench/backup.sh stop` stops the benchmark's PostgreSQL and deletes its state.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "bench: $*" >&2; }
die() { echo "bench: error: $*" >&2; exit 1; }
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

SIZE_MB=760 ROUNDS=3 LEVELS=false S3=false
while [ $# -gt 0 ]; do
  case "$1" in
    --size-mb) SIZE_MB="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --levels) LEVELS=true; shift ;;
    --s3) S3=true; shift ;;
    stop) state="$(state_dir bench)"; pg_cluster stop "$state/pg"; "$TESTENV/s3-server.sh" stop "$state-s3"
          "$ROOT/bench/garage.sh" stop "$state-garage"; rm -rf "$state"; exit 0 ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done
[[ "$SIZE_MB" =~ ^[0-9]+$ && "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--size-mb and --rounds take positive numbers"

"$ROOT/scripts/setup.sh"
WASM="$("$ROOT/scripts/build-policy.sh")"
log "cargo build --release -p ef-backup"
cargo build --release -p ef-backup >&2
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/ef-backup"
command -v pigz >/dev/null || die "pigz missing (apt-get install pigz)"
[ -x /usr/bin/time ] || die "GNU time missing (apt-get install time)"

find_pg_bin
STATE="$(state_dir bench)"
start_cluster "$STATE/pg" "${EF_BENCH_PG_PORT:-55452}"
if [ "$(cat "$STATE/seeded" 2>/dev/null)" != "$SIZE_MB" ]; then
  log "seeding database bench with ~$SIZE_MB MB (once; reused by later runs)"
  eval "$(pg_cluster seed "$STATE/pg" "$PG_PORT" bench "$SIZE_MB")"
  echo "$SIZE_MB" > "$STATE/seeded"
fi
export EF__DB_HOST=127.0.0.1 EF__DB_PORT="$PG_PORT" EF__DB_USER=postgres EF__DB_PASSWORD="$PG_CLUSTER_PASSWORD" EF__DB_NAME=bench
export EF__BACKUP_POLICY="$WASM"
MOTO_VARS=() GARAGE_VARS=()
s3_vars() {  # $1 = name of the array to fill, $2 = a server's export lines
  local -n vars="$1"
  while read -r _ kv; do vars+=("$kv"); done <<<"$2"
  vars+=(EF__AWS_ENDPOINT_URL="$(sed -n 's/^export AWS_ENDPOINT_URL_S3=//p' <<<"$2")")
}
if $S3; then
  trap '"$TESTENV/s3-server.sh" stop "$STATE-s3"; "$ROOT/bench/garage.sh" stop "$STATE-garage"' EXIT
  "$TESTENV/s3-server.sh" stop "$STATE-s3"  # one left by an interrupted run: its state is ours
  out="$(start_s3 "$STATE-s3" "${EF_BENCH_S3_PORT:-55910}" ef-bench)"
  s3_vars MOTO_VARS "$out"
  out="$("$ROOT/bench/garage.sh" start "$STATE-garage" "$(free_port "${EF_BENCH_GARAGE_PORT:-55930}")" ef-bench)"
  s3_vars GARAGE_VARS "$out"
fi
OUT="$STATE/out"
rm -rf "$OUT"; mkdir -p "$OUT"
PG_DUMP="$PG_BIN/pg_dump"
PGCONN=(-h 127.0.0.1 -p "$PG_PORT" -U postgres bench)

# One measurement of a command: prints "wall cpu rss_kb".
measure() {
  /usr/bin/time -o "$OUT/time" -f '%e %U %S %M' "$@" >"$OUT/stdout" 2>"$OUT/stderr" \
    || { tail -n 5 "$OUT/stderr" >&2; die "failed: $*"; }
  local wall user sys rss; read -r wall user sys rss < "$OUT/time"
  echo "$wall $(awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}') $rss"
}

size_of() { stat -c %s "$1"; }

run_method() {  # $1 = method name; prints "wall cpu rss_kb bytes"
  local m
  case "$1" in
    ef-backup|ef-backup-L*|ef-backup+moto|ef-backup+garage)
      rm -rf "$OUT/ef"; mkdir -p "$OUT/ef"
      local level="" s3=()
      case "$1" in
        ef-backup-L*) level="${1#ef-backup-L}" ;;
        ef-backup+moto) s3=("${MOTO_VARS[@]}") ;;
        ef-backup+garage) s3=("${GARAGE_VARS[@]}") ;;
      esac
      m="$(measure env "${s3[@]}" EF__BACKUP_DIR="$OUT/ef" EF__BACKUP_GZIP_LEVEL="$level" "$BIN" backup --json)"
      if [ ${#s3[@]} -gt 0 ]; then
        grep -q '"s3_uploaded":true' "$OUT/stdout" || die "the S3 upload failed: $(cat "$OUT/stdout")"
      fi
      echo "$m $(size_of "$(ls "$OUT"/ef/*.sql.gz)")" ;;
    gzip-9)
      m="$(PGPASSWORD="$EF__DB_PASSWORD" measure sh -c '"$0" "$@" | gzip -9 > "$OUT/g.gz"' "$PG_DUMP" "${PGCONN[@]}")"
      echo "$m $(size_of "$OUT/g.gz")" ;;
    pigz-9)
      m="$(PGPASSWORD="$EF__DB_PASSWORD" measure sh -c '"$0" "$@" | pigz -9 > "$OUT/p.gz"' "$PG_DUMP" "${PGCONN[@]}")"
      echo "$m $(size_of "$OUT/p.gz")" ;;
    pg_dump)
      m="$(PGPASSWORD="$EF__DB_PASSWORD" measure sh -c '"$0" "$@" > /dev/null' "$PG_DUMP" "${PGCONN[@]}")"
      echo "$m $PLAIN_BYTES" ;;
  esac
}
export OUT

PLAIN_BYTES="$(PGPASSWORD="$EF__DB_PASSWORD" "$PG_DUMP" "${PGCONN[@]}" | wc -c)"
methods=(ef-backup gzip-9 pigz-9 pg_dump)
$S3 && methods+=(ef-backup+moto ef-backup+garage)
$LEVELS && for l in 1 2 3 4 5 6 7 8 9; do methods+=("ef-backup-L$l"); done
declare -A results
for r in $(seq 1 "$ROUNDS"); do
  for m in "${methods[@]}"; do
    res="$(run_method "$m")"
    results[$m]+="$res"$'\n'
    log "round $r/$ROUNDS $m: $res (wall s, cpu s, peak RSS KiB, bytes)"
  done
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
col() { printf '%s' "${results[$1]}" | awk -v c="$2" 'NF {print $c}' | median; }

plain="$(col pg_dump 4)"
echo
echo "ef-backup benchmark: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "database: bench, $(awk -v b="$plain" 'BEGIN {printf "%.1f MB", b/1e6}') of plain SQL; $ROUNDS rounds, medians; ef-backup at its default gzip level"
printf '%-16s %9s %9s %10s %12s %8s\n' method wall_s cpu_s rss_MiB size_MB ratio
for m in "${methods[@]}"; do
  size="$(col "$m" 4)"
  printf '%-16s %9.2f %9.2f %10.1f %12.2f %8s\n' "$m" "$(col "$m" 1)" "$(col "$m" 2)" \
    "$(awk -v k="$(col "$m" 3)" 'BEGIN {print k/1024}')" "$(awk -v b="$size" 'BEGIN {print b/1e6}')" \
    "$(if [ "$m" = pg_dump ]; then echo -; else awk -v p="$plain" -v b="$size" 'BEGIN {printf "%.2f", p/b}'; fi)"
done
ef="$(col ef-backup 1)"
echo
awk -v ef="$ef" -v g="$(col gzip-9 1)" -v p="$(col pigz-9 1)" -v d="$(col pg_dump 1)" \
    -v es="$(col ef-backup 4)" -v gs="$(col gzip-9 4)" 'BEGIN {
  printf "gzip-9 time / ef-backup time:  %.2fx   (goal >= 3)\n", g/ef
  printf "pigz-9 time / ef-backup time:  %.2fx   (goal >= 1.5)\n", p/ef
  printf "ef-backup time / pg_dump time: %.2fx   (goal <= 1.3)\n", ef/d
  printf "ef-backup size / gzip-9 size:  %.3f   (goal <= 1)\n", es/gs
}'
$S3 && awk -v ef="$ef" -v g="$(col ef-backup+garage 1)" -v m="$(col ef-backup+moto 1)" 'BEGIN {
  printf "ef-backup+garage time / ef-backup time: %.2fx   (goal <= 1.10)\n", g/ef
  printf "ef-backup+moto time / ef-backup time:   %.2fx   (moto rewrites the object on completion, in Python)\n", m/ef
}'
echo
"$BIN" policy bench --rounds 500 | sed 's/^/policy: /'
rm -rf "$OUT"
