#!/usr/bin/env bash
# Installs what the tests and the demo need on a Debian 12 machine (run as root, or as a user
# with sudo). Idempotent: packages already present are only checked, so a re-run takes a second.
#   PostgreSQL server + client   the throwaway cluster (scripts/testenv/pg-cluster.sh) and pg_dump/psql
#   pigz, zstd, age, minisign    the stock tools the tests read backups with (gzip -t, zstd -t, age -d, minisign -V)
#   python3-venv                 the local S3 server (scripts/testenv/s3-server.sh, moto in a venv)
#   faketime                     S3 tests move the S3 server's clock
#   util-linux, e2fsprogs        runuser and flock (test scripts), mke2fs (tests)
#   a C compiler (gcc)           the linker cargo calls for the host binary
#   libpq-dev, pkg-config        the host links libpq (restore loads table data over it)
#   the ef-drill system user     restore drills run their throwaway server as it (as root)
# then the wasm32-wasip2 toolchain for the policy component (scripts/wasm-toolchain.sh).
# Prints nothing on stdout: progress goes to stderr as `setup: ...`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { echo "setup: $*" >&2; }
die() { echo "setup: error: $*" >&2; exit 1; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

# Any PostgreSQL major version counts (PGDG packages included), as long as the tools the
# scripts and the program call are there: pg-cluster.sh picks the newest /usr/lib/postgresql/*/bin.
have_postgres() {
  local bin t
  for bin in /usr/lib/postgresql/*/bin; do
    for t in initdb pg_ctl postgres pg_isready psql pg_dump pgbench; do
      [ -x "$bin/$t" ] || continue 2
    done
    return 0
  done
  return 1
}

if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
  die "this script installs packages with apt-get (Debian 12); on another system install PostgreSQL (server + client), libpq (development files), pkg-config, pigz, python3-venv, faketime and gcc yourself, then run scripts/wasm-toolchain.sh"
fi

need=()
have_postgres || need+=(postgresql)
# faketime: the S3 tests move the S3 server's clock (object and upload times cannot be set).
for p in pigz zstd age minisign python3-venv util-linux e2fsprogs faketime time curl; do installed "$p" || need+=("$p"); done
command -v cc >/dev/null || need+=(gcc libc6-dev)
for p in libpq-dev pkg-config; do installed "$p" || need+=("$p"); done
optional=()

SUDO=()
if [ "$(id -u)" -ne 0 ] && [ $((${#need[@]} + ${#optional[@]})) -gt 0 ]; then
  command -v sudo >/dev/null || die "missing packages (${need[*]} ${optional[*]}) and not root: run this script as root or install sudo"
  SUDO=(sudo)
fi
# dpkg's unpack chatter would bury the progress lines: keep it in a file, show it on failure.
APT_LOG="$(mktemp -t ef-setup-apt.XXXXXX)"
trap 'rm -f "$APT_LOG"' EXIT
apt_install() {
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >"$APT_LOG" 2>&1 \
    || { tail -n 30 "$APT_LOG" >&2; return 1; }
}

if [ $((${#need[@]} + ${#optional[@]})) -gt 0 ]; then
  log "installing: ${need[*]} ${optional[*]}"
  # Stale or absent package lists are the usual cause of "Unable to locate package" on a fresh
  # machine; an offline mirror should not stop an install that the local lists can satisfy.
  "${SUDO[@]}" apt-get update -qq >"$APT_LOG" 2>&1 || log "apt-get update failed; trying with the existing package lists"
  if [ ${#need[@]} -gt 0 ]; then
    apt_install "${need[@]}" || die "apt-get install ${need[*]} failed (see the apt output above; check network access to the Debian mirror)"
  fi
  if [ ${#optional[@]} -gt 0 ]; then
    apt_install "${optional[@]}" || log "warning: could not install ${optional[*]}"
  fi
  have_postgres || die "PostgreSQL installed but no /usr/lib/postgresql/*/bin has initdb, psql, pg_dump and pgbench"
else
  log "system packages present (PostgreSQL, libpq-dev, pkg-config, pigz, python3-venv, faketime, util-linux, e2fsprogs, cc)"
fi

# Restore drills start their throwaway PostgreSQL as this unprivileged user when ef-backup runs
# as root (initdb refuses root; not `postgres`, whose files a crafted backup could then reach).
if [ "$(id -u)" -eq 0 ] && ! id -u ef-drill >/dev/null 2>&1; then
  log "creating the system user ef-drill (restore drills run their throwaway server as it)"
  useradd --system --user-group --no-create-home --shell /usr/sbin/nologin ef-drill || die "useradd ef-drill failed"
fi

if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    die "cargo is installed in $HOME/.cargo/bin but not on PATH: run 'source \"\$HOME/.cargo/env\"' (or open a new login shell) and retry"
  fi
  die "cargo not found: install Rust with rustup (https://rustup.rs: curl -sSf https://sh.rustup.rs | sh -s -- -y), then 'source \"\$HOME/.cargo/env\"' and retry"
fi
log "cargo: $(cargo -V)"
# Only scripts/test.sh needs them (it checks formatting and lints, and says so when they are missing).
for c in fmt clippy; do
  cargo "$c" --version >/dev/null 2>&1 \
    || log "warning: cargo $c is missing (scripts/test.sh needs it): 'rustup component add rustfmt clippy', or with Debian's cargo 'apt-get install rustfmt rust-clippy'"
done

# The toolchain script prints usage hints on stdout; callers capture our stdout, so keep it clean.
"$ROOT/scripts/wasm-toolchain.sh" >&2 || die "wasm32-wasip2 toolchain setup failed (see the wasm-toolchain messages above)"
log "ready"
