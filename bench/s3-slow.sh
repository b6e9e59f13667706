#!/usr/bin/env bash
# A slow S3 store must not stretch the local backup: the time until the local backup is
# committed, local-only vs with S3 at full speed vs with S3 throttled to a slow link, as ratios.
#   bench/s3-slow.sh [--size-mb N] [--rounds R] [--rate BYTES_PER_S]
#     --size-mb N  size of the sample database on disk (default 150); created once in
#                  .work/bench-s3slow and reused while its size matches
#     --rounds R   rounds of every mode (default 3); medians are reported
#     --rate B     the throttled store's upload rate in bytes/s, all connections together
#                  (default 2000000: 2 MB/s), through bench/throttle_proxy.py
# Modes: local (--no-s3), s3 (moto, direct), s3-slow (moto behind the throttling proxy). For
# each: "local" = seconds until the local backup is committed (its log line), "total" = the
# whole run, upload (and its catch-up from the local file) included.
# `bench/s3-slow.sh stop` stops the benchmark's PostgreSQL and deletes its state.
# Env: EF_BENCH_PG_PORT (default 55472), EF_BENCH_S3_PORT (default 55940).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "bench: $*" >&2; }
die() { echo "bench: error: $*" >&2; exit 1; }
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

SIZE_MB=150 ROUNDS=3 RATE=2000000
while [ $# -gt 0 ]; do
  case "$1" in
    --size-mb) SIZE_MB="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    stop) state="$(state_dir bench-s3slow)"; pg_cluster stop "$state/pg"; "$TESTENV/s3-server.sh" stop "$state-s3"
          rm -rf "$state"; exit 0 ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done
[[ "$SIZE_MB" =~ ^[0-9]+$ && "$ROUNDS" =~ ^[1-9][0-9]*$ && "$RATE" =~ ^[1-9][0-9]*$ ]] \
  || die "--size-mb, --rounds and --rate take positive numbers"

"$ROOT/scripts/setup.sh"
WASM="$("$ROOT/scripts/build-policy.sh")"
log "cargo build --release -p ef-backup"
cargo build --release -p ef-backup >&2
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/ef-backup"

find_pg_bin
STATE="$(state_dir bench-s3slow)"
start_cluster "$STATE/pg" "${EF_BENCH_PG_PORT:-55472}"
if [ "$(cat "$STATE/seeded" 2>/dev/null)" != "$SIZE_MB" ]; then
  log "seeding database bench with ~$SIZE_MB MB (once; reused by later runs)"
  eval "$(pg_cluster seed "$STATE/pg" "$PG_PORT" bench "$SIZE_MB")"
  echo "$SIZE_MB" > "$STATE/seeded"
fi
export EF__DB_HOST=127.0.0.1 EF__DB_PORT="$PG_PORT" EF__DB_USER=postgres EF__DB_PASSWORD="$PG_CLUSTER_PASSWORD" EF__DB_NAME=bench
export EF__BACKUP_POLICY="$WASM" EF__STATE_DIR="$STATE/ef-state"

PROXY_PID=""
trap '[ -n "$PROXY_PID" ] && kill "$PROXY_PID"; "$TESTENV/s3-server.sh" stop "$STATE-s3"' EXIT
"$TESTENV/s3-server.sh" stop "$STATE-s3"  # one left by an interrupted run: its state is ours
out="$(start_s3 "$STATE-s3" "${EF_BENCH_S3_PORT:-55940}" ef-bench)"
ENDPOINT="$(sed -n 's/^export AWS_ENDPOINT_URL_S3=//p' <<<"$out")"
S3_VARS=()
while read -r _ kv; do case "$kv" in EF__*) S3_VARS+=("$kv") ;; esac; done <<<"$out"
coproc PROXY { exec python3 "$ROOT/bench/throttle_proxy.py" "${ENDPOINT#http://}" "$RATE"; }
read -r PROXY_PORT <&"${PROXY[0]}"

OUT="$STATE/out"
rm -rf "$OUT"; mkdir -p "$OUT"

run_mode() {  # $1 = local|s3|s3-slow; prints "local_s total_s s3_uploaded"
  local vars=()
  case "$1" in
    local) vars=() ;;
    s3) vars=("${S3_VARS[@]}" EF__AWS_ENDPOINT_URL="$ENDPOINT") ;;
    s3-slow) vars=("${S3_VARS[@]}" EF__AWS_ENDPOINT_URL="http://127.0.0.1:$PROXY_PORT") ;;
  esac
  rm -rf "$OUT/ef" "$OUT/committed"; mkdir -p "$OUT/ef"
  local start end
  start="$(date +%s.%N)"
  env "${vars[@]}" EF__S3_PREFIX="$1/" EF__BACKUP_DIR="$OUT/ef" "$BIN" backup --json $([ "$1" = local ] && echo --no-s3) \
    >"$OUT/stdout" 2> >(while IFS= read -r line; do
                          case "$line" in *本地数据库备份成功*) date +%s.%N > "$OUT/committed" ;; esac
                          printf '%s\n' "$line"
                        done > "$OUT/stderr") \
    || { tail -n 5 "$OUT/stderr" >&2; die "$1: the backup failed"; }
  end="$(date +%s.%N)"
  for _ in $(seq 50); do [ -s "$OUT/committed" ] && break; sleep 0.1; done
  [ -s "$OUT/committed" ] || die "$1: no local commit line in the log"
  local uploaded=-
  [ "$1" = local ] || uploaded="$(grep -o '"s3_uploaded":[a-z]*' "$OUT/stdout" | cut -d: -f2)"
  awk -v s="$start" -v c="$(cat "$OUT/committed")" -v e="$end" -v u="$uploaded" 'BEGIN {printf "%.2f %.2f %s\n", c - s, e - s, u}'
}

modes=(local s3 s3-slow)
declare -A results
for r in $(seq 1 "$ROUNDS"); do
  for m in "${modes[@]}"; do
    res="$(run_mode "$m")"
    results[$m]+="$res"$'\n'
    log "round $r/$ROUNDS $m: $res (local s, total s, s3_uploaded)"
  done
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
col() { printf '%s' "${results[$1]}" | awk -v c="$2" 'NF {print $c}' | median; }
size="$(stat -c %s "$(ls "$OUT"/ef/bench_backup_*.sql.gz)")"  # not the globals file beside it

echo
echo "S3 slow-store benchmark: $(nproc) cores; database bench (~$SIZE_MB MB on disk, $(awk -v b="$size" 'BEGIN {printf "%.1f MB", b/1e6}') compressed); $ROUNDS rounds, medians"
printf '%-8s %10s %10s  %s\n' mode local_s total_s s3_uploaded
for m in "${modes[@]}"; do
  printf '%-8s %10.2f %10.2f  %s\n' "$m" "$(col "$m" 1)" "$(col "$m" 2)" "$(printf '%s' "${results[$m]}" | awk 'NF {print $3}' | sort -u | xargs)"
done
echo
awk -v l="$(col local 1)" -v f="$(col s3 1)" -v s="$(col s3-slow 1)" -v r="$RATE" 'BEGIN {
  printf "local backup with S3 at full speed / local-only:        %.2fx\n", f/l
  printf "local backup with S3 at %.1f MB/s / local-only:          %.2fx   (goal: about 1; pg_dump never waits for S3)\n", r/1e6, s/l
}'
rm -rf "$OUT"
