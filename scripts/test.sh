#!/usr/bin/env bash
# The one command that tests everything on a fresh Debian 12 machine:
#   scripts/test.sh [CARGO_TEST_ARGS...] [-- TEST_BINARY_ARGS...]
#   e.g. scripts/test.sh -p ef-backup-e2e       scripts/test.sh restore -- --nocapture
# Installs what is missing (setup.sh), builds the policy component and the workspace, starts a
# throwaway PostgreSQL, runs `cargo test` against it and always stops it again.
# Env: EF_TEST_PG_PORT (first port to try, default 55432), EF_TEST_THREADS (default 2),
#      EF_TEST_KEEP=1 (keep the state dir after a successful run), PG_BIN (PostgreSQL binaries),
#      EF_TEST_LINT=1 (check formatting and clippy also when arguments are given; a run without
#      arguments always does), EF_TEST_BIN_OVERRIDE (run the tests against another ef-backup binary, e.g. one built from
#      an older commit, to check that a new test fails without its fix).
# The tests get: EF_TEST_PG_PORT, EF_TEST_PG_DIR, EF_TEST_POLICY_WASM, EF_TEST_BIN,
#      EF_TEST_GFS_WASM, EF_TEST_TEMPLATE_WASM, EF_TEST_HOSTILE_WASM, EF_TEST_GREEDY_WASM,
#      EF_TEST_V01_WASM (the default policy as released for 0.1.0, tests/guests/v0_1),
#      EF_TEST_S3_*, EF_TEST_TESTENV, EF_TEST_STATE, PG_BIN and EF__DB_HOST/PORT/USER/PASSWORD/NAME.
# Exit code: cargo test's (or 1 when a step before it fails).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "test.sh: $*" >&2; }
die() { echo "test.sh: error: $*" >&2; exit 1; }
START=$SECONDS
STEP="setup"

source "$ROOT/scripts/lib.sh"

# ---- steps -----------------------------------------------------------------------------------

STATE=""
PG_STARTED=false
S3_STARTED=false
# shellcheck disable=SC2317  # runs from the EXIT trap, which shellcheck does not follow
finish() {
  local rc=$?
  trap - EXIT
  if $PG_STARTED; then pg_cluster stop "$STATE/pg" || log "warning: stopping PostgreSQL in $STATE/pg failed"; fi
  if $S3_STARTED; then "$TESTENV/s3-server.sh" stop "$S3_DIR" || log "warning: stopping the S3 server in $S3_DIR failed"; fi
  local took=$(( SECONDS - START ))
  if [ "$rc" -eq 0 ]; then
    if [ "${EF_TEST_KEEP:-}" != 1 ] && [ -n "$STATE" ]; then rm -rf "$STATE"; fi
    log "PASSED: cargo test exit 0 ($((took / 60))m$((took % 60))s)"
  else
    if [ -n "$STATE" ] && [ -f "$STATE/pg/postgresql.log" ]; then
      echo "---- last 50 lines of $STATE/pg/postgresql.log ----" >&2
      tail -n 50 "$STATE/pg/postgresql.log" >&2
      echo "----" >&2
    fi
    log "FAILED at step '$STEP' (exit $rc, $((took / 60))m$((took % 60))s)${STATE:+; state kept in $STATE}"
  fi
  exit "$rc"
}
trap finish EXIT
# Without these, an interrupt would skip the EXIT trap in some bash versions and leave
# PostgreSQL running.
trap 'exit 130' INT
trap 'exit 143' TERM

"$ROOT/scripts/setup.sh"

STEP="build policy"
WASM="$("$ROOT/scripts/build-policy.sh")"
GFS_WASM="$("$ROOT/scripts/build-policy.sh" "$ROOT/examples/policies/gfs")"
TEMPLATE_WASM="$("$ROOT/scripts/build-policy.sh" "$ROOT/examples/policies/template")"
HOSTILE_WASM="$("$ROOT/scripts/build-policy.sh" "$ROOT/tests/guests/hostile")"
GREEDY_WASM="$("$ROOT/scripts/build-policy.sh" "$ROOT/tests/guests/greedy")"
V01_WASM="$("$ROOT/scripts/build-policy.sh" "$ROOT/tests/guests/v0_1")"
log "policy components: $WASM $GFS_WASM $TEMPLATE_WASM $HOSTILE_WASM $GREEDY_WASM $V01_WASM"

# Style and lints gate the whole run (CI runs it without arguments); a run of some tests only
# (arguments given) skips them unless EF_TEST_LINT=1.
if [ $# -eq 0 ] || [ "${EF_TEST_LINT:-0}" = 1 ]; then
  STEP="cargo fmt"
  cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1 \
    || die "cargo fmt and cargo clippy are needed: 'rustup component add rustfmt clippy' (or with Debian's cargo 'apt-get install rustfmt rust-clippy')"
  cargo fmt --all --check >&2 || die "the code is not formatted: run 'cargo fmt --all' (the diff is above)"
  STEP="cargo clippy"
  log "cargo clippy --workspace --all-targets -- -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings || die "clippy found warnings (above): fix them, or allow one where it is wrong, saying why"
fi

STEP="dependency rule"
"$ROOT/scripts/check-deps.sh" >&2 || die "the crates' dependency rule is broken (above)"

STEP="cargo build"
log "cargo build --workspace --all-targets (several minutes on a cold machine)"
cargo build --workspace --all-targets
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/ef-backup"
[ -x "$BIN" ] || die "cargo build succeeded but $BIN is missing"

STEP="start PostgreSQL"
find_pg_bin
STATE="$(state_dir test)"
# Two runs in one checkout would share the cluster and the scratch dir.
exec 9>"$STATE.lock"
flock -n 9 || die "another scripts/test.sh is running in this checkout (lock $STATE.lock)"
# Every run starts from an empty cluster; a leftover of a killed run is stopped first.
pg_cluster stop "$STATE/pg" 2>/dev/null || true
"$TESTENV/s3-server.sh" stop "$STATE-s3" 2>/dev/null || true
rm -rf "$STATE"
(umask 022; mkdir -p "$STATE")
PG_STARTED=true
start_cluster "$STATE/pg" "${EF_TEST_PG_PORT:-55432}"

STEP="start the S3 server"
# Beside the per-run state, not in it: moto's venv there takes a minute to install, and the
# server's own state lives in memory only.
S3_DIR="$STATE-s3"
S3_STARTED=true
s3_out="$(start_s3 "$S3_DIR" "${EF_TEST_S3_PORT:-55900}" ef-test-backups)"
# The tests opt in to S3 per run (EF_TEST_S3_*), so the S3 variables are not exported as EF__*.
EF_TEST_S3_ENDPOINT="$(sed -n 's/^export AWS_ENDPOINT_URL_S3=//p' <<<"$s3_out")"
EF_TEST_S3_ACCESS_KEY="$(sed -n 's/^export EF__AWS_ACCESS_KEY_ID=//p' <<<"$s3_out")"
EF_TEST_S3_SECRET_KEY="$(sed -n 's/^export EF__AWS_SECRET_ACCESS_KEY=//p' <<<"$s3_out")"
export EF_TEST_S3_ENDPOINT EF_TEST_S3_ACCESS_KEY EF_TEST_S3_SECRET_KEY EF_TEST_S3_BUCKET=ef-test-backups \
  EF_TEST_S3_PYTHON="$S3_DIR/venv/bin/python"

export EF_TEST_PG_PORT="$PG_PORT" EF_TEST_PG_DIR="$STATE/pg" EF_TEST_POLICY_WASM="$WASM" EF_TEST_GFS_WASM="$GFS_WASM" \
  EF_TEST_HOSTILE_WASM="$HOSTILE_WASM" EF_TEST_GREEDY_WASM="$GREEDY_WASM" EF_TEST_TEMPLATE_WASM="$TEMPLATE_WASM" \
  EF_TEST_V01_WASM="$V01_WASM" \
  EF_TEST_BIN="${EF_TEST_BIN_OVERRIDE:-$BIN}" EF_TEST_TESTENV="$TESTENV" EF_TEST_STATE="$STATE" PG_BIN
export EF__DB_HOST EF__DB_PORT EF__DB_USER EF__DB_PASSWORD EF__DB_NAME

# Extra arguments: cargo's before `--`, the test binaries' after it. `-p` narrows the run,
# which `--workspace` would silently override.
cargo_args=() bin_args=() after_sep=false workspace=(--workspace) threads=(--test-threads "${EF_TEST_THREADS:-2}")
for a in "$@"; do
  if $after_sep; then bin_args+=("$a"); continue; fi
  case "$a" in
    --) after_sep=true; continue ;;
    -p|-p?*|--package|--package=*) workspace=() ;;
  esac
  cargo_args+=("$a")
done
for a in "${bin_args[@]}"; do case "$a" in --test-threads|--test-threads=*) threads=() ;; esac; done

STEP="cargo test"
cmd=(cargo test "${workspace[@]}" "${cargo_args[@]}" -- "${threads[@]}" "${bin_args[@]}")
log "${cmd[*]}   (PostgreSQL on 127.0.0.1:$PG_PORT, state in $STATE)"
rc=0
"${cmd[@]}" || rc=$?
exit "$rc"
