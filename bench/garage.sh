#!/usr/bin/env bash
# Garage (https://garagehq.deuxfleurs.fr), a production S3-compatible store written in Rust,
# as the benchmark's second S3 server beside moto. moto is the test suite's store, but it is a
# test double: its CompleteMultipartUpload re-reads and rewrites the whole object in Python
# (about 0.14 s for a 36 MB backup here), where S3 and Garage only write metadata. Measuring
# against both shows what the upload costs ef-backup and what a given store costs on top.
#   bench/garage.sh start DIR PORT BUCKET   build Garage once (into .work/tools, ~6 min cold),
#                                           start a one-node cluster in DIR on 127.0.0.1:PORT
#                                           (its RPC on PORT+1), create BUCKET and an access key,
#                                           print export lines like scripts/testenv/s3-server.sh
#   bench/garage.sh stop DIR                stop it (no-op if not running)
# The cluster's state lives in DIR and is deleted by stop.
set -euo pipefail

GARAGE_VERSION=2.5.0
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.work/tools/garage-$GARAGE_VERSION"
GARAGE="$TOOLS/bin/garage"
die() { echo "garage.sh: error: $*" >&2; exit 1; }
log() { echo "garage.sh: $*" >&2; }
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"

stop() {
  local dir="$1"
  if [ -f "$dir/garage.pid" ] && kill -0 "$(cat "$dir/garage.pid")" 2>/dev/null; then
    kill "$(cat "$dir/garage.pid")"
    for _ in $(seq 50); do kill -0 "$(cat "$dir/garage.pid")" 2>/dev/null || break; sleep 0.1; done
    log "stopped (pid $(cat "$dir/garage.pid"))"
  fi
  # Only a directory this script set up is deleted.
  if [ -f "$dir/garage.toml" ]; then rm -rf "$dir"; fi
}

build() {
  [ -x "$GARAGE" ] && return
  log "building Garage $GARAGE_VERSION into $TOOLS (once; about 6 minutes on 2 cores)"
  # Only the LMDB metadata engine: the default features also build SQLite and metrics.
  cargo install garage --version "=$GARAGE_VERSION" --locked --no-default-features \
    --features bundled-libs,lmdb --root "$TOOLS" >"$ROOT/.work/tools/garage-build.log" 2>&1 \
    || die "building Garage failed (see $ROOT/.work/tools/garage-build.log)"
}

start() {
  local dir="$1" port="$2" bucket="$3"
  [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number"
  mkdir -p "$ROOT/.work/tools"
  build
  stop "$dir"
  [ ! -e "$dir" ] || [ -z "$(ls -A "$dir")" ] || die "$dir exists and is not a Garage state directory: choose another"
  mkdir -p "$dir/meta" "$dir/data"
  local cfg="$dir/garage.toml"
  (umask 077; cat >"$cfg" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1
# Backups are gzip already.
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$((port + 1))"
rpc_public_addr = "127.0.0.1:$((port + 1))"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$port"
root_domain = ".s3.garage.localhost"
EOF
)
  "$GARAGE" -c "$cfg" server >"$dir/garage.log" 2>&1 9>&- &
  echo $! >"$dir/garage.pid"
  local g=("$GARAGE" -c "$cfg") id=""
  for _ in $(seq 100); do
    id="$("${g[@]}" node id -q 2>/dev/null | cut -d@ -f1)" && [ -n "$id" ] && break
    kill -0 "$(cat "$dir/garage.pid")" 2>/dev/null || die "Garage exited (see $dir/garage.log)"
    sleep 0.1
  done
  [ -n "$id" ] || die "Garage did not answer (see $dir/garage.log)"
  {
    "${g[@]}" layout assign -z bench -c 10G "$id"
    "${g[@]}" layout apply --version 1
    "${g[@]}" bucket create "$bucket"
    "${g[@]}" key create bench
    "${g[@]}" bucket allow --read --write --owner "$bucket" --key bench
  } >>"$dir/setup.log" 2>&1 || die "setting up the Garage cluster failed (see $dir/setup.log)"
  # The key is read back rather than imported so that no secret is passed in argv.
  local info key secret
  info="$("${g[@]}" key info --show-secret bench)"
  key="$(sed -n 's/^Key ID: *//p' <<<"$info")"
  secret="$(sed -n 's/^Secret key: *//p' <<<"$info")"
  if [ -z "$key" ] || [ -z "$secret" ]; then die "could not read the access key back (garage key info changed?)"; fi
  for _ in $(seq 50); do
    port_busy "$port" && break
    sleep 0.1
  done
  log "ready on 127.0.0.1:$port (bucket $bucket)"
  cat <<EOF
export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$port
export EF__AWS_ACCESS_KEY_ID=$key
export EF__AWS_SECRET_ACCESS_KEY=$secret
export EF__AWS_REGION=us-east-1
export EF__AWS_S3_BACKUP_BUCKET=$bucket
EOF
}

case "${1:-}" in
  start) [ $# -eq 4 ] || die "usage: $0 start DIR PORT BUCKET"; start "$2" "$3" "$4" ;;
  stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
  *) die "usage: $0 start DIR PORT BUCKET | stop DIR" ;;
esac
