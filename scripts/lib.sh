# shellcheck shell=bash
# Shared by scripts/test.sh, scripts/demo.sh and bench/ (sourced; expects ROOT, log and die to be defined).
TESTENV="$ROOT/scripts/testenv"

# rustup puts cargo in ~/.cargo/bin but only login shells see it.
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then PATH="$HOME/.cargo/bin:$PATH"; fi

# Settings from the developer's shell must not leak in: a stray EF__AWS_* or AWS_* would send
# data to a real bucket, a stray EF__BACKUP_DIR would point at real backups.
while IFS= read -r var; do
  case "$var" in EF__*|AWS_*) unset "$var" ;; esac
done < <(compgen -e)

# /tmp fallback for the state dir, one per checkout (and per user).
tmp_state() { echo "/tmp/ef-backup-$(id -u)-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)/$1"; }

# As root, pg-cluster.sh runs PostgreSQL as the `postgres` OS user: the cluster dir needs every
# parent traversable by it, and the unix socket path limits it to 80 chars. The checkout's own
# .work/ is preferred (per checkout, next to the code); /tmp is the fallback (e.g. under /root).
state_dir() {  # $1 = test|demo; prints the state dir (the cluster lives in its pg/ subdir)
  local want="$ROOT/.work/$1" os_user="${PG_OS_USER:-postgres}"
  (umask 022; mkdir -p "$want") 2>/dev/null || true
  if [ -d "$want" ] && [ $(( ${#want} + 3 )) -le 80 ] \
     && { [ "$(id -u)" -ne 0 ] || runuser -u "$os_user" -- test -x "$want" 2>/dev/null; }; then
    echo "$want"; return
  fi
  local tmp; tmp="$(tmp_state "$1")"
  (umask 022; mkdir -p "$tmp") || die "cannot create $tmp"
  # /tmp is shared: a directory planted there by another user must not receive our data.
  [ -O "$(dirname "$tmp")" ] || die "$(dirname "$tmp") belongs to another user: remove it (as root) and retry"
  echo "$tmp"
}

find_pg_bin() {  # same choice as pg-cluster.sh: $PG_BIN, else the newest /usr/lib/postgresql/*/bin
  if [ -n "${PG_BIN:-}" ]; then
    [ -x "$PG_BIN/initdb" ] || die "PG_BIN=$PG_BIN has no initdb (unset PG_BIN or point it at a PostgreSQL bin directory)"
    return
  fi
  PG_BIN="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
  [ -x "$PG_BIN/initdb" ] || die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (run scripts/setup.sh)"
}

# pg_ctl runs as the `postgres` OS user and complains when it cannot enter our working
# directory (a checkout under /root): call the script from /.
# The cluster's superuser password: distinctive, so a test can tell whether it leaked into
# output (the default, `postgres`, is also the user name).
PG_CLUSTER_PASSWORD="${PG_CLUSTER_PASSWORD:-ef-e2e-Secret-42}"
pg_cluster() { (cd / && PGPASSWORD="$PG_CLUSTER_PASSWORD" "$TESTENV/pg-cluster.sh" "$@"); }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {  # the first port from $1 nobody listens on
  local p
  for p in $(seq "$1" $(( $1 + 20 ))); do port_busy "$p" || { echo "$p"; return 0; }; done
  die "no free port in $1..$(( $1 + 20 ))"
}

# Starts the cluster in $1 and evals its EF__DB_* exports; sets PG_PORT. A cluster left running
# by an earlier run keeps its port (pg-cluster.sh refuses to move it); otherwise the first free
# port from $2 (10 tries). A port can be taken between the check and the bind, hence the retry
# on "Address already in use".
# shellcheck disable=SC2034  # PG_PORT is read by the sourcing script
start_cluster() {
  local dir="$1" first="$2" port out prev=""
  if ! [[ "$first" =~ ^[0-9]+$ ]] || [ "$first" -lt 1024 ] || [ "$first" -gt 65526 ]; then
    die "port $first is not a port number from 1024 to 65526"
  fi
  [ -f "$dir/data/postmaster.pid" ] && prev="$(sed -n 4p "$dir/data/postmaster.pid")"
  for port in $prev $(seq "$first" $((first + 9))); do
    if [ "$port" != "$prev" ] && port_busy "$port"; then log "port $port is in use, trying the next one"; continue; fi
    # 9>&-: the postmaster must not inherit a lock fd of the caller and hold it after we exit.
    if out="$(pg_cluster start "$dir" "$port" 9>&-)"; then
      eval "$out"; PG_PORT="$port"; return 0
    fi
    tail -n 5 "$dir/postgresql.log" 2>/dev/null | grep -q 'Address already in use' \
      || die "could not start PostgreSQL in $dir (see the messages above and $dir/postgresql.log)"
  done
  die "no free port in $first..$((first + 9)) for PostgreSQL (choose another first port)"
}

# Starts moto (s3-server.sh) in $1 on the first free port from $2, creating bucket $3, with
# SigV4 authentication on; prints its export lines.
start_s3() {
  local dir="$1" first="$2" bucket="$3" port
  for port in $(seq "$first" $((first + 9))); do
    if port_busy "$port"; then log "port $port is in use, trying the next one"; continue; fi
    BUCKET="$bucket" "$TESTENV/s3-server.sh" start "$dir" "$port" 9>&- && return 0
  done
  die "could not start the S3 test server on a port in $first..$((first + 9)) (see $dir/moto.log)"
}
