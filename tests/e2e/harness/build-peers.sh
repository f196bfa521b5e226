#!/usr/bin/env bash
# Builds the real peers the end-to-end tests start: kube-apiserver (from the
# Kubernetes Go modules) and etcd (from etcd's Go modules), with the machine's
# Go toolchain through the Go module proxy. Binaries are cached outside the
# repository, so a second run takes seconds.
#
#   tests/e2e/harness/build-peers.sh          # prints the two binary paths
set -euo pipefail

KUBERNETES_VERSION="${KUBERNETES_VERSION:-v1.33.13}"
ETCD_VERSION="${ETCD_VERSION:-v3.5.35}"
CACHE="${TRUSTPLANE_CACHE:-$HOME/.cache/trustplane}"
HERE="$(cd "$(dirname "$0")" && pwd)"
BIN="$CACHE/bin"
mkdir -p "$BIN"

log() { echo "[build-peers] $*" >&2; }

command -v go >/dev/null || { echo "error: Go is needed to build kube-apiserver and etcd (it is on this machine kind; install Go 1.24+)" >&2; exit 1; }

build_kube_apiserver() {
  local out="$BIN/kube-apiserver-$KUBERNETES_VERSION"
  if [[ -x "$out" ]]; then echo "$out"; return; fi
  local minor="v0.${KUBERNETES_VERSION#v1.}"
  local work="$CACHE/build/kube-apiserver-$KUBERNETES_VERSION"
  rm -rf "$work"; mkdir -p "$work"
  cp "$HERE/kube-apiserver/main.go" "$work/"
  log "resolving k8s.io/kubernetes@$KUBERNETES_VERSION (staging modules pinned to $minor)"
  local kubernetes_mod
  kubernetes_mod="$(cd "$work" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  {
    echo "module trustplane.test/kube-apiserver"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
    echo
    echo "replace ("
    # k8s.io/kubernetes points each staging module at ./staging/...; a module
    # that imports it must pin each one to the matching published v0.x.y.
    sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$kubernetes_mod" | sort -u | while read -r module; do
      echo "	$module => $module $minor"
    done
    echo ")"
  } > "$work/go.mod"
  log "building kube-apiserver $KUBERNETES_VERSION (first time only; several minutes)"
  (cd "$work" && go mod tidy >/dev/null 2>&1 && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${KUBERNETES_VERSION#v1.}" -o "$out.tmp" .)
  mv "$out.tmp" "$out"
  echo "$out"
}

build_etcd() {
  local out="$BIN/etcd-$ETCD_VERSION"
  if [[ -x "$out" ]]; then echo "$out"; return; fi
  local work="$CACHE/build/etcd-$ETCD_VERSION"
  rm -rf "$work"; mkdir -p "$work"
  cp "$HERE/etcd/main.go" "$work/"
  printf 'module trustplane.test/etcd\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > "$work/go.mod"
  log "building etcd $ETCD_VERSION (first time only)"
  (cd "$work" && go mod tidy >/dev/null 2>&1 && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out.tmp" .)
  mv "$out.tmp" "$out"
  echo "$out"
}

case "${1:-all}" in
  kube-apiserver) build_kube_apiserver ;;
  etcd) build_etcd ;;
  all) build_etcd; build_kube_apiserver ;;
  *) echo "usage: $0 [all|kube-apiserver|etcd]" >&2; exit 2 ;;
esac
