#!/usr/bin/env bash
# Builds a policy crate into a WASI Preview 2 component and prints the path of the .wasm.
#   scripts/build-policy.sh [CRATE_DIR]     (default: guest/, the default policy)
# Sets up the wasm32-wasip2 toolchain first when needed (scripts/wasm-toolchain.sh).
# All policies share target/wasm, so the guest std is built once.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$(realpath "${1:-$ROOT/guest}")"
[ -f "$DIR/Cargo.toml" ] || { echo "build-policy.sh: no Cargo.toml in $DIR" >&2; exit 2; }
NAME="$(sed -n '/^\[package\]/,/^\[/{s/^name *= *"\(.*\)"/\1/p}' "$DIR/Cargo.toml" | head -n1)"
[ -n "$NAME" ] || { echo "build-policy.sh: no package name in $DIR/Cargo.toml" >&2; exit 2; }

"$ROOT/scripts/wasm-toolchain.sh" >/dev/null
# shellcheck disable=SC1091
source "${EF_WASM_TOOLCHAIN_DIR:-$HOME/.cache/ef-wasm-toolchain}/env.sh"
"$EF_WASM_CARGO" build --quiet --profile wasm-release --manifest-path "$DIR/Cargo.toml" --target-dir "$ROOT/target/wasm" >&2
WASM="$ROOT/target/wasm/wasm32-wasip2/wasm-release/${NAME//-/_}.wasm"
[ -f "$WASM" ] || { echo "build-policy.sh: build succeeded but $WASM is missing" >&2; exit 1; }
# A component, not a core module: version 0x0d after the magic.
[ "$(head -c 8 "$WASM" | od -An -tx1 | tr -d ' \n')" = 0061736d0d000100 ] \
  || { echo "build-policy.sh: $WASM is not a WebAssembly component" >&2; exit 1; }
echo "$WASM"
