#!/usr/bin/env bash
# The workspace's dependency rule: ef-backup-core builds without the policy runtime, the S3 SDK
# and the HTTP server (they plug in through its Policy and Mirror traits), so an embedding app or
# a second runtime does not pay for them and the core cannot grow a hidden dependency on them.
# Run by scripts/test.sh; exits 1 naming the offending crates and the path that pulls them in.
set -euo pipefail
cd "$(dirname "$0")/.."

FORBIDDEN='^(wasmtime|wasmtime-[a-z0-9-]+|wasi-[a-z0-9-]+|cranelift-[a-z0-9-]+|aws-[a-z0-9-]+|axum|axum-core|hyper|tower-http) '

tree() { cargo tree --offline -p "$1" -e normal --prefix none --no-dedupe 2>/dev/null || cargo tree -p "$1" -e normal --prefix none --no-dedupe; }

# The pattern must catch what it is meant to: the host does depend on all of them.
host_hits="$(tree ef-backup | grep -E "$FORBIDDEN" | cut -d' ' -f1 | sort -u | tr '\n' ' ')"
for must in wasmtime aws-sdk-s3 axum; do
  case " $host_hits " in *" $must "*) ;; *) echo "check-deps: the pattern no longer finds $must in the host's tree; fix this script" >&2; exit 1 ;; esac
done

hits="$(tree ef-backup-core | grep -E "$FORBIDDEN" | cut -d' ' -f1 | sort -u || true)"
if [ -n "$hits" ]; then
  echo "check-deps: ef-backup-core must not depend on the policy runtime, the S3 SDK or the HTTP server, but pulls in:" >&2
  echo "$hits" | sed 's/^/  /' >&2
  first="$(echo "$hits" | head -1)"
  echo "how: cargo tree -p ef-backup-core -i $first" >&2
  exit 1
fi
echo "check-deps: ef-backup-core has none of wasmtime, aws-*, axum, hyper (ok)"
