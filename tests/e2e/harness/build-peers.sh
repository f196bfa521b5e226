#!/usr/bin/env bash
# Builds the real peers the end-to-end tests start: kube-apiserver (from the
# Kubernetes Go modules) and etcd (from etcd's Go modules), with the machine's
# Go toolchain through the Go module proxy; and the tools that drive them:
# kubectl (k8s.io/kubernetes/cmd/kubectl, the same Kubernetes version as
# kube-apiserver) and helm (helm.sh/helm/v3/cmd/helm). Binaries are cached
# outside the repository, so a second run takes seconds.
#
#   tests/e2e/harness/build-peers.sh          # prints the two peer binary paths
#   tests/e2e/harness/build-peers.sh kubectl  # prints the kubectl path
#   tests/e2e/harness/build-peers.sh helm     # prints the helm path
set -euo pipefail

KUBERNETES_VERSION="${KUBERNETES_VERSION:-v1.33.13}"
ETCD_VERSION="${ETCD_VERSION:-v3.5.35}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
CACHE="${TRUSTPLANE_CACHE:-$HOME/.cache/trustplane}"
HERE="$(cd "$(dirname "$0")" && pwd)"
BIN="$CACHE/bin"
mkdir -p "$BIN"

log() { echo "[build-peers] $*" >&2; }

command -v go >/dev/null || { echo "error: Go is needed to build kube-apiserver and etcd (it is on this machine kind; install Go 1.24+)" >&2; exit 1; }

# Builds a main package from the Kubernetes modules at $KUBERNETES_VERSION:
# $1 the binary's name (also the module's), $2 the main package's directory.
build_from_kubernetes() {
  local name="$1" main_dir="$2"
  local out="$BIN/$name-$KUBERNETES_VERSION"
  if [[ -x "$out" ]]; then echo "$out"; return; fi
  local minor="v0.${KUBERNETES_VERSION#v1.}"
  local work="$CACHE/build/$name-$KUBERNETES_VERSION"
  rm -rf "$work"; mkdir -p "$work"
  cp "$main_dir/main.go" "$work/"
  log "resolving k8s.io/kubernetes@$KUBERNETES_VERSION (staging modules pinned to $minor)"
  local kubernetes_mod
  kubernetes_mod="$(cd "$work" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  {
    echo "module trustplane.test/$name"
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
  log "building $name $KUBERNETES_VERSION (first time only; several minutes)"
  local stamp=""
  for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    stamp+=" -X $package.gitVersion=$KUBERNETES_VERSION -X $package.gitMajor=1 -X $package.gitMinor=${KUBERNETES_VERSION#v1.}"
  done
  (cd "$work" && go mod tidy >/dev/null 2>&1 && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w$stamp" -o "$out.tmp" .)
  mv "$out.tmp" "$out"
  echo "$out"
}

build_kube_apiserver() { build_from_kubernetes kube-apiserver "$HERE/kube-apiserver"; }

build_kubectl() { build_from_kubernetes kubectl "$HERE/kubectl"; }

# helm from its own module (no replace directives, so `go install` builds it).
build_helm() {
  local out="$BIN/helm-$HELM_VERSION"
  if [[ -x "$out" ]]; then echo "$out"; return; fi
  local work="$CACHE/build/helm-$HELM_VERSION"
  rm -rf "$work"; mkdir -p "$work"
  # The Kubernetes version helm assumes without a cluster (`helm template`,
  # `helm lint`) follows its client-go, as helm's Makefile stamps it:
  # client-go v0.37.x -> 1.37. Unstamped it would be 1.20.
  local helm_mod client_go minor
  helm_mod="$(cd "$work" && go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  client_go="$(sed -n 's#^\s*k8s.io/client-go v0\.\([0-9]*\)\..*#\1#p' "$helm_mod")"
  [[ -n "$client_go" ]] || { echo "error: cannot find k8s.io/client-go in $helm_mod" >&2; exit 1; }
  local stamp="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  for package in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    stamp+=" -X $package.k8sVersionMajor=1 -X $package.k8sVersionMinor=$client_go"
  done
  log "building helm $HELM_VERSION (first time only; a few minutes)"
  GOBIN="$work" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w $stamp" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$work/helm" "$out"
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
  kubectl) build_kubectl ;;
  helm) build_helm ;;
  all) build_etcd; build_kube_apiserver ;;
  *) echo "usage: $0 [all|kube-apiserver|etcd|kubectl|helm]" >&2; exit 2 ;;
esac
