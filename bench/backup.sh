#!/usr/bin/env bash
# Backup throughput: ef-backup against the obvious alternatives, measured in one run,
# interleaved, on the same database.
#   bench/backup.sh [--size-mb N] [--corpora LIST] [--corpus-mb N] [--rounds R] [--levels]
#                   [--formats] [--s3]
#     --size-mb N    size of the `app` sample database on disk (default 760, about 500 MB of plain
#                    SQL); created once in .work/bench and reused while its size matches
#     --corpora LIST the sample databases, comma separated (default app; `all` = every one), each
#                    seeded once in the same cluster and reused while its size matches:
#                      app      bench: pgbench tables + an application schema (pg-cluster.sh seed),
#                               sized by --size-mb
#                      pgbench  bench_pgbench: pgbench -i -s N (server-side generation)
#                      text     bench_text: md5/sha256 hex and uuid columns
#                      jsonb    bench_jsonb: jsonb documents with varied keys and values
#                      bytea    bench_bytea: bytea, a mix of random-ish and compressible bytes
#                    every method runs on every corpus; the table and ratios are printed per corpus
#     --corpus-mb N  plain SQL size of every corpus other than app (default 200)
#     --rounds R     rounds of every method (default 3); medians are reported
#     --levels       also run ef-backup at every EF__BACKUP_GZIP_LEVEL (1-9) on every corpus: size
#                    and time per corpus and level, then which levels meet the goals on every
#                    corpus (size <= gzip -9's, wall <= 1.15x bare pg_dump, >= 1.8x faster than
#                    pg_dump | pigz -9; the size goal wins when they conflict)
#     --formats      also run ef-backup-zstd (EF__BACKUP_FORMAT=zstd), ef-backup-age
#                    (EF__BACKUP_AGE_RECIPIENTS, to a key generated once in the state dir),
#                    ef-backup-zstd-age (both) and pg_dump | zstd -3 -T2 (zstd-3). An ef-backup
#                    without these settings (it refuses them, or writes .sql.gz anyway) gets a
#                    `bench: skipping ...` line instead of those methods
#     --zstd-levels  also run ef-backup with EF__BACKUP_FORMAT=zstd at levels 1 3 5 7 9 12 on every
#                    corpus: size against gzip -9 (goal <= 0.85) and wall against the gzip path
#                    (ef-backup at its default, goal <= 1.00), then which level meets both where
#     --baseline BIN also run another ef-backup build (BIN, e.g. the previous release) and this one
#                    both at gzip level 4 (baseline-L4, ef-backup-L4), and print this build's wall
#                    and CPU time against it: what a change costs (e.g. the manifest's hashing)
#     --s3           also run ef-backup with the S3 upload on, against two S3 servers started here:
#                    moto (the test suite's store) and Garage (a production store; bench/garage.sh
#                    builds it once, ~6 min), and report each one's wall time against the
#                    local-only backup
# Env: EF_BENCH_PG_PORT (first port tried for PostgreSQL, default 55452), EF_BENCH_S3_PORT,
#      EF_BENCH_GARAGE_PORT.
# shellcheck disable=SC2016  # the sh -c scripts below expand their own arguments
# Methods: ef-backup backup (release build), pg_dump | gzip -9, pg_dump | pigz -9, and bare
# pg_dump > /dev/null (the limit). Wall time, CPU time and peak RSS come from GNU time.
# ef-backup runs with EF__BACKUP_GLOBALS=false (the database only, like pg_dump).
# Every ef-backup backup is checked: exactly one backup (and its manifest) in the backup dir, named as its format
# says; encrypted ones decrypt (age -d) and decompress to the end after every run, the others
# pass gzip -t / zstd -t in round 1. Needs pigz, and with --formats zstd and age (apt packages).
# `bench/backup.sh stop` stops the benchmark's PostgreSQL and deletes its state.
set -euo pipefail
# A command substitution that fails stops the run too (run_method runs in one: without this, a
# failed measurement inside it went unnoticed).
shopt -s inherit_errexit

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "bench: $*" >&2; }
die() { echo "bench: error: $*" >&2; exit 1; }
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

ALL_CORPORA=(app pgbench text jsonb bytea)
BASELINE="" ZSTD_LEVELS=false
ZSTD_SWEEP=(1 3 5 7 9 12)
SIZE_MB=760 CORPUS_MB=200 ROUNDS=3 LEVELS=false FORMATS=false S3=false CORPORA_ARG=app
while [ $# -gt 0 ]; do
  case "$1" in
    --size-mb) SIZE_MB="$2"; shift 2 ;;
    --corpora) CORPORA_ARG="$2"; shift 2 ;;
    --corpus-mb) CORPUS_MB="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --levels) LEVELS=true; shift ;;
    --zstd-levels) ZSTD_LEVELS=true; shift ;;
    --formats) FORMATS=true; shift ;;
    --s3) S3=true; shift ;;
    --baseline) BASELINE="$(realpath "$2")"; [ -x "$BASELINE" ] || die "--baseline $2: not an executable"; shift 2 ;;
    stop) state="$(state_dir bench)"; pg_cluster stop "$state/pg"; "$TESTENV/s3-server.sh" stop "$state-s3"
          "$ROOT/bench/garage.sh" stop "$state-garage"; rm -rf "$state"; exit 0 ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done
[[ "$SIZE_MB" =~ ^[0-9]+$ && "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--size-mb and --rounds take positive numbers"
[[ "$CORPUS_MB" =~ ^[1-9][0-9]*$ ]] || die "--corpus-mb takes a positive number"
CORPORA=()
if [ "$CORPORA_ARG" = all ]; then
  CORPORA=("${ALL_CORPORA[@]}")
else
  IFS=, read -r -a wanted <<<"$CORPORA_ARG"
  for c in "${wanted[@]}"; do
    [[ " ${ALL_CORPORA[*]} " == *" $c "* ]] || die "unknown corpus '$c' in --corpora (one of: ${ALL_CORPORA[*]}, or all)"
    [[ " ${CORPORA[*]} " == *" $c "* ]] || CORPORA+=("$c")
  done
  [ ${#CORPORA[@]} -gt 0 ] || die "--corpora takes a list such as app,text (or all)"
fi

"$ROOT/scripts/setup.sh"
WASM="$("$ROOT/scripts/build-policy.sh")"
log "cargo build --release -p ef-backup"
cargo build --release -p ef-backup >&2
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/ef-backup"
need_tool() { command -v "$1" >/dev/null || die "$1 missing, needed for $3 (apt-get install $2)"; }
need_tool pigz pigz "pg_dump | pigz -9"
if $FORMATS; then
  need_tool zstd zstd "--formats (zstd-3, and checking ef-backup's .zst files)"
  need_tool age age "--formats (ef-backup-age: checking that its files decrypt)"
  need_tool age-keygen age "--formats (ef-backup-age: its key pair)"
fi
[ -x /usr/bin/time ] || die "GNU time missing (apt-get install time)"

find_pg_bin
[ -x "$PG_BIN/pgbench" ] || die "no pgbench in $PG_BIN (it comes with the PostgreSQL server package)"
STATE="$(state_dir bench)"
start_cluster "$STATE/pg" "${EF_BENCH_PG_PORT:-55452}"
PG_DUMP="$PG_BIN/pg_dump"
sql() {  # psql as the superuser; $1 = database, then psql arguments
  local db="$1"; shift
  PGPASSWORD="$PG_CLUSTER_PASSWORD" PGOPTIONS='-c client_min_messages=warning' \
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$db" "$@"
}
dump_bytes() { PGPASSWORD="$PG_CLUSTER_PASSWORD" "$PG_DUMP" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$1" | wc -c; }

db_of() { if [ "$1" = app ]; then echo bench; else echo "bench_$1"; fi; }

# The generated corpora: a table (corpus_ddl) filled by one INSERT ... generate_series per row
# range (corpus_rows $1 FROM TO), inside the server. Deterministic: the same rows every seed.
corpus_ddl() {
  case "$1" in
    text) echo "CREATE TABLE hashes (id bigint NOT NULL, md5 text NOT NULL, sha256 text NOT NULL, uid uuid NOT NULL, code text NOT NULL)" ;;
    jsonb) echo "CREATE TABLE docs (id bigint NOT NULL, doc jsonb NOT NULL)" ;;
    bytea) echo "CREATE TABLE blobs (id bigint NOT NULL, kind smallint NOT NULL, data bytea NOT NULL, tail bytea)" ;;
  esac
}
corpus_rows() {
  local from="$2" to="$3"
  case "$1" in
    text) cat <<EOF
INSERT INTO hashes
SELECT i, md5(i::text), encode(sha256(int8send(i)), 'hex'), md5(i::text || 'u')::uuid,
       upper(substr(md5(i::text || 'c'), 1, 6 + i % 27))
FROM generate_series($from, $to) AS i
EOF
    ;;
    jsonb) cat <<EOF
INSERT INTO docs
SELECT i, jsonb_build_object(
         'id', i,
         'type', (ARRAY['order', 'invoice', 'user', 'event', 'session', 'product'])[1 + i % 6],
         'user', jsonb_build_object('name', 'user_' || (i::bigint * 7919 % 100003), 'email', 'u' || (i % 50021) || '@example.org',
                                    'verified', i % 3 = 0),
         'amount', round(((i::bigint * 7919) % 1000003) / 100.0, 2),
         'score', (i % 1000) / 7.0,
         'tags', to_jsonb(ARRAY['t' || i % 17, 't' || i % 29, 't' || i % 101]),
         'attr_' || (i % 64), md5(i::text),
         'created', to_char(timestamp '2024-01-01' + i * interval '7 seconds', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
         'meta', CASE WHEN i % 4 = 0 THEN NULL
                      ELSE jsonb_build_object('v', i % 5, 'flags', jsonb_build_array(i % 2 = 0, i % 3 = 0)) END,
         'note', CASE WHEN i % 7 = 0 THEN repeat('lorem ipsum dolor ', 1 + i % 5) ELSE '' END)
       || CASE WHEN i % 10 = 0 THEN jsonb_build_object('coupon', upper(substr(md5(i::text || 'k'), 1, 10)), 'discount', i % 30)
               ELSE '{}'::jsonb END
FROM generate_series($from, $to) AS i
EOF
    ;;
    # kind 0: 64 random-ish bytes (four md5s); 1: one md5 repeated; 2: a run of one byte;
    # 3: text bytes. tail: 16 random-ish bytes on every other row.
    bytea) cat <<EOF
INSERT INTO blobs
SELECT i, i % 4,
       CASE i % 4
         WHEN 0 THEN decode(md5(i::text) || md5(i::text || 'a') || md5(i::text || 'b') || md5(i::text || 'c'), 'hex')
         WHEN 1 THEN decode(repeat(md5(i::text), 2 + i % 6), 'hex')
         WHEN 2 THEN decode(repeat(lpad(to_hex(i % 256), 2, '0'), 32 + i % 96), 'hex')
         ELSE convert_to(repeat('row ' || i || ' ', 1 + i % 8), 'UTF8')
       END,
       CASE WHEN i % 2 = 0 THEN decode(md5(i::text || 't'), 'hex') END
FROM generate_series($from, $to) AS i
EOF
    ;;
  esac
}

seed_corpus() {  # $1 = corpus, $2 = MB (app: on disk, via pg-cluster.sh; others: of plain SQL)
  local c="$1" mb="$2" db; db="$(db_of "$1")"
  local target=$(( mb * 1000000 )) start=$SECONDS
  if [ "$c" = app ]; then
    pg_cluster seed "$STATE/pg" "$PG_PORT" "$db" "$mb" >/dev/null
    log "seeded $db (app, ~$mb MB on disk) in $(( SECONDS - start )) s"
    return
  fi
  sql postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
  if [ "$c" = pgbench ]; then
    # Scale 1 first, to learn its plain SQL size, then the scale that gives about $mb MB.
    local pgbench=("$PG_BIN/pgbench" -q -i -I dtGvp -h 127.0.0.1 -p "$PG_PORT" -U postgres)
    PGPASSWORD="$PG_CLUSTER_PASSWORD" "${pgbench[@]}" -s 1 "$db" >/dev/null 2>&1 || die "pgbench -i -s 1 $db failed"
    local per s; per="$(dump_bytes "$db")"; s=$(( (target + per / 2) / per )); [ "$s" -ge 1 ] || s=1
    if [ "$s" -gt 1 ]; then
      PGPASSWORD="$PG_CLUSTER_PASSWORD" "${pgbench[@]}" -s "$s" "$db" >/dev/null 2>&1 || die "pgbench -i -s $s $db failed"
    fi
    log "seeded $db (pgbench scale $s, ~$(( per / 1000000 )) MB of plain SQL per scale) in $(( SECONDS - start )) s"
    return
  fi
  # A sample of rows first, to learn the plain SQL size of a row, then the rest.
  local sample=20000 base full rows
  sql "$db" -c "$(corpus_ddl "$c")"
  base="$(dump_bytes "$db")"
  sql "$db" -c "$(corpus_rows "$c" 1 "$sample")"
  full="$(dump_bytes "$db")"
  rows=$(( (target - base) * sample / (full - base) ))
  [ "$rows" -gt "$sample" ] && sql "$db" -c "$(corpus_rows "$c" $(( sample + 1 )) "$rows")"
  sql "$db" -c "ALTER TABLE $(corpus_ddl "$c" | awk '{print $3}') ADD PRIMARY KEY (id)" -c "VACUUM ANALYZE"
  log "seeded $db ($c, $rows rows, ~$(( (full - base) / sample )) bytes of plain SQL a row) in $(( SECONDS - start )) s"
}

# Seeded once per corpus and size; the marker of app keeps its old name.
for c in "${CORPORA[@]}"; do
  if [ "$c" = app ]; then marker="$STATE/seeded" want="$SIZE_MB"; else marker="$STATE/seeded-$c" want="$CORPUS_MB"; fi
  if [ "$(cat "$marker" 2>/dev/null)" != "$want" ]; then
    if [ "$c" = app ]; then
      log "seeding database bench with ~$SIZE_MB MB (once; reused by later runs)"
    else
      log "seeding database $(db_of "$c") with ~$CORPUS_MB MB of plain SQL (once; reused by later runs)"
    fi
    rm -f "$marker"
    seed_corpus "$c" "$want"
    echo "$want" > "$marker"
  fi
done
export EF__DB_HOST=127.0.0.1 EF__DB_PORT="$PG_PORT" EF__DB_USER=postgres EF__DB_PASSWORD="$PG_CLUSTER_PASSWORD" EF__DB_NAME=bench
# The database alone, as pg_dump dumps it: no globals backup (roles, tablespaces) beside it, so
# every run leaves exactly one file.
export EF__BACKUP_POLICY="$WASM" EF__BACKUP_GLOBALS=false
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

AGE_KEY="$STATE/age-key.txt" AGE_PUB=""
if $FORMATS; then
  [ -s "$AGE_KEY" ] || age-keygen -o "$AGE_KEY" 2>/dev/null || die "age-keygen -o $AGE_KEY failed"
  AGE_PUB="$(age-keygen -y "$AGE_KEY")" || die "age-keygen -y $AGE_KEY failed"
fi

# One measurement of a command: prints "wall cpu rss_kb".
measure() {
  /usr/bin/time -o "$OUT/time" -f '%e %U %S %M' "$@" >"$OUT/stdout" 2>"$OUT/stderr" \
    || { tail -n 5 "$OUT/stderr" >&2; die "failed: $*"; }
  local wall user sys rss; read -r wall user sys rss < "$OUT/time"
  echo "$wall $(awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}') $rss"
}

size_of() { stat -c %s "$1"; }

# The settings of an ef-backup method that picks a format (nothing for the others), and the
# suffix its file must have.
format_vars() {
  case "$1" in
    ef-backup-zstd) echo EF__BACKUP_FORMAT=zstd ;;
    ef-backup-age) echo EF__BACKUP_AGE_RECIPIENTS="$AGE_PUB" ;;
    ef-backup-zstd-age) echo EF__BACKUP_FORMAT=zstd; echo EF__BACKUP_AGE_RECIPIENTS="$AGE_PUB" ;;
  esac
}
suffix_of() {
  case "$1" in
    ef-backup-zstd|ef-backup-zstd-L*) echo .sql.zst ;;
    ef-backup-age) echo .sql.gz.age ;;
    ef-backup-zstd-age) echo .sql.zst.age ;;
    *) echo .sql.gz ;;
  esac
}

ef_file() {  # $1 = backup dir; prints the one backup ef-backup wrote there (beside its manifest)
  local files=()
  mapfile -t files < <(find "$1" -mindepth 1 -maxdepth 1 ! -name '*.manifest.json')
  [ ${#files[@]} -eq 1 ] || die "ef-backup left ${#files[@]} files in $1 besides the manifest, expected exactly one: ${files[*]##*/}"
  echo "${files[0]}"
}

# A wrong file stops the bench: the name says its format; encrypted files decrypt and
# decompress to the end after every run, the others are tested in round 1.
check_file() {  # $1 = method, $2 = file, $3 = round
  local f="$2" want; want="$(suffix_of "$1")"
  [[ "$f" == *"$want" ]] || die "$1 wrote ${f##*/}, expected a *$want file"
  case "$f" in
    *.sql.zst.age) age -d -i "$AGE_KEY" "$f" | zstd -q -dc > /dev/null || die "$1: ${f##*/} does not decrypt and decompress (age -d | zstd -dc)" ;;
    *.sql.gz.age) age -d -i "$AGE_KEY" "$f" | gzip -dc > /dev/null || die "$1: ${f##*/} does not decrypt and decompress (age -d | gzip -dc)" ;;
    *.sql.zst) [ "$3" != 1 ] || zstd -q -t "$f" || die "$1: ${f##*/} fails zstd -t" ;;
    *.sql.gz) [ "$3" != 1 ] || gzip -t "$f" || die "$1: ${f##*/} fails gzip -t" ;;
  esac
}

run_method() {  # $1 = method name, $2 = round; prints "wall cpu rss_kb bytes"
  local m f
  case "$1" in
    ef-backup|ef-backup-L*|ef-backup+moto|ef-backup+garage|ef-backup-zstd|ef-backup-age|ef-backup-zstd-age|baseline-L4|ef-backup-zstd-L*)
      rm -rf "$OUT/ef"; mkdir -p "$OUT/ef"
      local level="" s3=() fmt=() bin="$BIN"
      case "$1" in
        ef-backup-L*) level="${1#ef-backup-L}" ;;
        baseline-L4) level=4 bin="$BASELINE" ;;
        ef-backup-zstd-L*) fmt=(EF__BACKUP_FORMAT=zstd "EF__BACKUP_ZSTD_LEVEL=${1#ef-backup-zstd-L}") ;;
        ef-backup+moto) s3=("${MOTO_VARS[@]}") ;;
        ef-backup+garage) s3=("${GARAGE_VARS[@]}") ;;
        ef-backup-zstd|ef-backup-age|ef-backup-zstd-age) mapfile -t fmt < <(format_vars "$1") ;;
      esac
      m="$(measure env "${s3[@]}" "${fmt[@]}" EF__BACKUP_DIR="$OUT/ef" EF__BACKUP_GZIP_LEVEL="$level" "$bin" backup --json)"
      if [ ${#s3[@]} -gt 0 ]; then
        grep -q '"s3_uploaded":true' "$OUT/stdout" || die "the S3 upload failed: $(cat "$OUT/stdout")"
      fi
      f="$(ef_file "$OUT/ef")"
      check_file "$1" "$f" "$2"
      echo "$m $(size_of "$f")" ;;
    gzip-9)
      m="$(PGPASSWORD="$EF__DB_PASSWORD" measure sh -c '"$0" "$@" | gzip -9 > "$OUT/g.gz"' "$PG_DUMP" "${PGCONN[@]}")"
      echo "$m $(size_of "$OUT/g.gz")" ;;
    pigz-9)
      m="$(PGPASSWORD="$EF__DB_PASSWORD" measure sh -c '"$0" "$@" | pigz -9 > "$OUT/p.gz"' "$PG_DUMP" "${PGCONN[@]}")"
      echo "$m $(size_of "$OUT/p.gz")" ;;
    zstd-3)
      m="$(PGPASSWORD="$EF__DB_PASSWORD" measure sh -c '"$0" "$@" | zstd -3 -T2 -q -c > "$OUT/z.zst"' "$PG_DUMP" "${PGCONN[@]}")"
      echo "$m $(size_of "$OUT/z.zst")" ;;
    pg_dump)
      m="$(PGPASSWORD="$EF__DB_PASSWORD" measure sh -c '"$0" "$@" > /dev/null' "$PG_DUMP" "${PGCONN[@]}")"
      echo "$m $PLAIN_BYTES" ;;
  esac
}
export OUT BASELINE

# Whether this ef-backup writes format $1 (sets SUPPORTED): one backup of the nearly empty
# postgres database. An ef-backup from before these settings refuses them by name or ignores them.
format_supported() {
  local dir="$OUT/probe" fmt=() f want why; want="$(suffix_of "$1")"
  mapfile -t fmt < <(format_vars "$1")
  rm -rf "$dir"; mkdir -p "$dir"
  SUPPORTED=false
  if ! env "${fmt[@]}" EF__DB_NAME=postgres EF__BACKUP_DIR="$dir" "$BIN" backup --json >"$OUT/probe.log" 2>&1; then
    why="$(grep -m1 -E 'EF__BACKUP_FORMAT|EF__BACKUP_AGE_RECIPIENTS' "$OUT/probe.log")" \
      || { tail -n 5 "$OUT/probe.log" >&2; die "ef-backup backup with ${fmt[*]%%=*} failed"; }
    log "skipping $1: this ef-backup refuses ${fmt[*]%%=*}: $why"
    return 0
  fi
  f="$(ef_file "$dir")"
  if [[ "$f" != *"$want" ]]; then
    log "skipping $1: this ef-backup ignores ${fmt[*]%%=*} (it wrote ${f##*/}, not a *$want file)"
    return 0
  fi
  check_file "$1" "$f" 1
  rm -rf "$dir"
  SUPPORTED=true
}

methods=(ef-backup gzip-9 pigz-9 pg_dump)
$S3 && methods+=(ef-backup+moto ef-backup+garage)
if $FORMATS; then
  for m in ef-backup-zstd ef-backup-age ef-backup-zstd-age; do
    format_supported "$m"
    if $SUPPORTED; then methods+=("$m"); fi
  done
  methods+=(zstd-3)
fi
$LEVELS && for l in 1 2 3 4 5 6 7 8 9; do methods+=("ef-backup-L$l"); done
$ZSTD_LEVELS && for l in "${ZSTD_SWEEP[@]}"; do methods+=("ef-backup-zstd-L$l"); done
if [ -n "$BASELINE" ]; then
  methods+=(baseline-L4)
  $LEVELS || methods+=(ef-backup-L4)
fi
has_method() { [[ " ${methods[*]} " == *" $1 "* ]]; }

declare -A results plain_of
for c in "${CORPORA[@]}"; do
  DB="$(db_of "$c")"
  export EF__DB_NAME="$DB"
  PGCONN=(-h 127.0.0.1 -p "$PG_PORT" -U postgres "$DB")
  PLAIN_BYTES="$(PGPASSWORD="$EF__DB_PASSWORD" "$PG_DUMP" "${PGCONN[@]}" | wc -c)"
  plain_of[$c]="$PLAIN_BYTES"
  for r in $(seq 1 "$ROUNDS"); do
    for m in "${methods[@]}"; do
      res="$(run_method "$m" "$r")"
      results[$c/$m]+="$res"$'\n'
      if [ ${#CORPORA[@]} -gt 1 ]; then where="$c round $r/$ROUNDS"; else where="round $r/$ROUNDS"; fi
      log "$where $m: $res (wall s, cpu s, peak RSS KiB, bytes)"
    done
  done
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
col() { printf '%s' "${results[$1/$2]}" | awk -v c="$3" 'NF {print $c}' | median; }  # corpus method column

report() {  # $1 = corpus: its table and ratios
  local c="$1" m size plain label ef; plain="${plain_of[$c]}"
  label="$(db_of "$c")"; if [ ${#CORPORA[@]} -gt 1 ] || [ "$c" != app ]; then label+=" (corpus $c)"; fi
  echo "database: $label, $(awk -v b="$plain" 'BEGIN {printf "%.1f MB", b/1e6}') of plain SQL; $ROUNDS rounds, medians; ef-backup at its default gzip level"
  local w=16  # the method column: wider for the longer names of --formats
  for m in "${methods[@]}"; do [ ${#m} -le "$w" ] || w=${#m}; done
  printf '%-*s %9s %9s %10s %12s %8s\n' "$w" method wall_s cpu_s rss_MiB size_MB ratio
  for m in "${methods[@]}"; do
    size="$(col "$c" "$m" 4)"
    printf '%-*s %9.2f %9.2f %10.1f %12.2f %8s\n' "$w" "$m" "$(col "$c" "$m" 1)" "$(col "$c" "$m" 2)" \
      "$(awk -v k="$(col "$c" "$m" 3)" 'BEGIN {print k/1024}')" "$(awk -v b="$size" 'BEGIN {print b/1e6}')" \
      "$(if [ "$m" = pg_dump ]; then echo -; else awk -v p="$plain" -v b="$size" 'BEGIN {printf "%.2f", p/b}'; fi)"
  done
  ef="$(col "$c" ef-backup 1)"
  echo
  awk -v ef="$ef" -v g="$(col "$c" gzip-9 1)" -v p="$(col "$c" pigz-9 1)" -v d="$(col "$c" pg_dump 1)" \
      -v es="$(col "$c" ef-backup 4)" -v gs="$(col "$c" gzip-9 4)" 'BEGIN {
    printf "gzip-9 time / ef-backup time:  %.2fx   (goal >= 3)\n", g/ef
    printf "pigz-9 time / ef-backup time:  %.2fx   (goal >= 1.5)\n", p/ef
    printf "ef-backup time / pg_dump time: %.2fx   (goal <= 1.3)\n", ef/d
    printf "ef-backup size / gzip-9 size:  %.3f   (goal <= 1)\n", es/gs
  }'
  if $FORMATS; then
    local z="" a="" za=""
    has_method ef-backup-zstd && z="$(col "$c" ef-backup-zstd 1)"
    has_method ef-backup-age && a="$(col "$c" ef-backup-age 1)"
    has_method ef-backup-zstd-age && za="$(col "$c" ef-backup-zstd-age 1)"
    if [ -n "$z" ]; then
      awk -v z="$z" -v ef="$ef" -v zs="$(col "$c" ef-backup-zstd 4)" -v gs="$(col "$c" gzip-9 4)" 'BEGIN {
        printf "ef-backup-zstd size / gzip-9 size:             %.3f   (goal <= 0.85)\n", zs/gs
        printf "ef-backup-zstd time / ef-backup time:          %.2fx   (goal <= 1.00)\n", z/ef
      }'
    else
      echo "ef-backup-zstd size / gzip-9 size, time / ef-backup time: skipped (this ef-backup has no EF__BACKUP_FORMAT)"
    fi
    if [ -n "$a" ]; then
      awk -v a="$a" -v ef="$ef" 'BEGIN { printf "ef-backup-age time / ef-backup time:           %.2fx   (goal <= 1.10)\n", a/ef }'
    else
      echo "ef-backup-age time / ef-backup time: skipped (this ef-backup has no EF__BACKUP_AGE_RECIPIENTS)"
    fi
    if [ -n "$za" ] && [ -n "$z" ]; then
      awk -v za="$za" -v z="$z" 'BEGIN { printf "ef-backup-zstd-age time / ef-backup-zstd time: %.2fx   (goal <= 1.10)\n", za/z }'
    else
      echo "ef-backup-zstd-age time / ef-backup-zstd time: skipped (this ef-backup has no zstd or no age)"
    fi
  fi
  $S3 && awk -v ef="$ef" -v g="$(col "$c" ef-backup+garage 1)" -v m="$(col "$c" ef-backup+moto 1)" 'BEGIN {
    printf "ef-backup+garage time / ef-backup time: %.2fx   (goal <= 1.10)\n", g/ef
    printf "ef-backup+moto time / ef-backup time:   %.2fx   (moto rewrites the object on completion, in Python)\n", m/ef
  }'
  if [ -n "$BASELINE" ]; then
    awk -v w="$(col "$c" ef-backup-L4 1)" -v bw="$(col "$c" baseline-L4 1)" -v u="$(col "$c" ef-backup-L4 2)" -v bu="$(col "$c" baseline-L4 2)" 'BEGIN {
      printf "ef-backup-L4 / baseline-L4 (%s): wall %.3fx, CPU %.3fx (%+.2f CPU s)\n", ENVIRON["BASELINE"], w/bw, u/bu, u-bu }'
  fi
  if $ZSTD_LEVELS; then
    echo
    echo "EF__BACKUP_ZSTD_LEVEL on $(db_of "$c"): size / gzip-9 size (goal <= 0.85), wall / the gzip path's wall (goal <= 1.00)"
    printf '%-6s %13s %15s\n' level size/gzip-9 wall/gzip-path
    for l in "${ZSTD_SWEEP[@]}"; do
      awk -v l="$l" -v s="$(col "$c" "ef-backup-zstd-L$l" 4)" -v gs="$(col "$c" gzip-9 4)" -v w="$(col "$c" "ef-backup-zstd-L$l" 1)" \
          -v g="$(col "$c" ef-backup 1)" 'BEGIN { printf "%-6s %13.3f %14.2fx\n", "L" l, s/gs, w/g }'
    done
  fi
  if $LEVELS; then
    local l
    echo
    echo "EF__BACKUP_GZIP_LEVEL on $(db_of "$c"): size / gzip-9 size (goal <= 1), wall / pg_dump wall (goal <= 1.15), pigz-9 wall / wall (goal >= 1.8)"
    printf '%-6s %13s %14s %13s\n' level size/gzip-9 wall/pg_dump pigz-9/wall
    for l in 1 2 3 4 5 6 7 8 9; do
      awk -v l="$l" -v s="$(col "$c" "ef-backup-L$l" 4)" -v gs="$(col "$c" gzip-9 4)" -v w="$(col "$c" "ef-backup-L$l" 1)" \
          -v d="$(col "$c" pg_dump 1)" -v p="$(col "$c" pigz-9 1)" \
          'BEGIN { printf "%-6s %13.3f %13.2fx %12.2fx\n", "L" l, s/gs, w/d, p/w }'
    done
  fi
}

# Per zstd level, every corpus against the zstd goals: >= 15% smaller than gzip -9, no more wall
# time than the gzip path (ef-backup at its default).
zstd_summary() {
  local l c
  echo "EF__BACKUP_ZSTD_LEVEL against the goals on every corpus (${CORPORA[*]}): size <= 0.85x gzip -9's, wall <= the gzip path's"
  for l in "${ZSTD_SWEEP[@]}"; do
    for c in "${CORPORA[@]}"; do
      echo "$l $c $(col "$c" "ef-backup-zstd-L$l" 4) $(col "$c" gzip-9 4) $(col "$c" "ef-backup-zstd-L$l" 1) $(col "$c" ef-backup 1)"
    done
  done | awk '
    { l = $1; c = $2; s = $3 / $4; w = $5 / $6
      if (!(l in seen)) { seen[l] = 1; order[++n] = l; met[l] = 0; worst_s[l] = 0 }
      line[l] = line[l] sprintf(" %s %.3f/%.2fx%s", c, s, w, (s <= 0.85 && w <= 1) ? "" : "*")
      if (s <= 0.85 && w <= 1) met[l]++
      if (s > worst_s[l]) worst_s[l] = s }
    END {
      print "level  corpus size/gzip-9 / wall/gzip-path (* = a goal missed)"
      for (i = 1; i <= n; i++) {
        l = order[i]; printf "L%-5s%s\n", l, line[l]
        if (best == "" || met[l] > met[best] || (met[l] == met[best] && worst_s[l] < worst_s[best])) best = l
      }
      printf "choice: L%s meets both goals on the most corpora (%d of %d)\n", best, met[best], NR / n
    }'
}

# Per level, every corpus against the three goals; the size goal wins when they conflict.
level_summary() {
  local l c
  echo "EF__BACKUP_GZIP_LEVEL against the goals on every corpus (${CORPORA[*]}): size <= gzip -9's, wall <= 1.15x pg_dump, >= 1.8x faster than pigz -9"
  for l in 1 2 3 4 5 6 7 8 9; do
    for c in "${CORPORA[@]}"; do
      echo "$l $c $(col "$c" "ef-backup-L$l" 4) $(col "$c" gzip-9 4) $(col "$c" "ef-backup-L$l" 1) $(col "$c" pg_dump 1) $(col "$c" pigz-9 1)"
    done
  done | awk '
    function add(list, item) { return list == "" ? item : list ", " item }
    { l = $1; c = $2; s = $3 / $4; w = $5 / $6; p = $7 / $5
      if (!(l in seen)) { seen[l] = 1; order[++n] = l; worst_s[l] = 0; worst_w[l] = 0 }
      if (s > 1)    ms[l] = add(ms[l], sprintf("%s %.3f (+%.1f%%)", c, s, (s - 1) * 100))
      if (w > 1.15) mw[l] = add(mw[l], sprintf("%s %.2fx (+%.0f%% over)", c, w, (w / 1.15 - 1) * 100))
      if (p < 1.8)  mp[l] = add(mp[l], sprintf("%s %.2fx (-%.0f%% under)", c, p, (1 - p / 1.8) * 100))
      if (s > worst_s[l]) worst_s[l] = s
      if (w > worst_w[l]) worst_w[l] = w }
    END {
      for (i = 1; i <= n; i++) {
        l = order[i]
        if (ms[l] mw[l] mp[l] == "") { printf "L%s  meets all three\n", l; if (best == "") best = l; continue }
        printf "L%s  misses %d of 3\n", l, (ms[l] != "") + (mw[l] != "") + (mp[l] != "")
        if (ms[l] != "") printf "      size / gzip-9 size <= 1:      %s\n", ms[l]
        if (mw[l] != "") printf "      wall / pg_dump wall <= 1.15:  %s\n", mw[l]
        if (mp[l] != "") printf "      pigz-9 wall / wall >= 1.8:    %s\n", mp[l]
        if (ms[l] == "" && (size_best == "" || worst_w[l] < worst_w[size_best])) size_best = l
        if (closest == "" || worst_s[l] < worst_s[closest]) closest = l
      }
      if (best != "") printf "choice: L%s, the lowest level that meets all three goals on every corpus\n", best
      else if (size_best != "") printf "choice: no level meets all three; of those with size <= gzip -9 everywhere, L%s is the fastest (worst wall %.2fx pg_dump)\n", size_best, worst_w[size_best]
      else printf "choice: no level keeps size <= gzip -9 on every corpus; the closest is L%s (worst size %.3f of gzip -9)\n", closest, worst_s[closest]
    }'
}

echo
echo "ef-backup benchmark: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
first=true
for c in "${CORPORA[@]}"; do
  $first || echo
  first=false
  report "$c"
done
if $LEVELS; then
  echo
  level_summary
fi
if $ZSTD_LEVELS; then
  echo
  zstd_summary
fi
echo
"$BIN" policy bench --rounds 500 | sed 's/^/policy: /'
rm -rf "$OUT"
