#!/usr/bin/env bash
# Builds istio-interop (this directory's Go program, linked against Istio's own
# CA code at the release pinned in go.mod) with the machine's Go toolchain
# through the Go module proxy. The binary is cached outside the repository;
# its name carries the Istio release and a hash of this directory's sources,
# so a second run takes milliseconds and an edited program is rebuilt.
#
#   tests/interop/istio/build.sh          # prints the binary path on stdout
set -euo pipefail

CACHE="${TRUSTPLANE_CACHE:-$HOME/.cache/trustplane}"
HERE="$(cd "$(dirname "$0")" && pwd)"
BIN="$CACHE/bin"
mkdir -p "$BIN"

log() { echo "[build-istio-interop] $*" >&2; }

command -v go >/dev/null || { echo "error: Go is needed to build istio-interop (install Go 1.26+)" >&2; exit 1; }

ISTIO_VERSION="$(sed -n 's/^\s*istioRelease\s*=\s*"\(.*\)"/\1/p' "$HERE/main.go")"
[[ -n "$ISTIO_VERSION" ]] || { echo "error: no istioRelease constant in $HERE/main.go" >&2; exit 1; }
SRC_HASH="$(cd "$HERE" && cat go.mod go.sum main.go | sha256sum | cut -c1-12)"
out="$BIN/istio-interop-$ISTIO_VERSION-$SRC_HASH"

if [[ -x "$out" ]]; then echo "$out"; exit 0; fi

log "building istio-interop against Istio $ISTIO_VERSION (first time only; about a minute with a cold Go cache)"
start=$SECONDS
# -mod=readonly: build exactly what go.mod/go.sum pin; never rewrite them.
(cd "$HERE" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "-s -w" -o "$out.tmp" .)
"$out.tmp" version >&2 || { echo "error: built binary does not link the pinned Istio commit" >&2; rm -f "$out.tmp"; exit 1; }
mv "$out.tmp" "$out"
log "built in $((SECONDS - start))s"
echo "$out"
