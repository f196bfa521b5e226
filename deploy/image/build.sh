#!/usr/bin/env bash
# Builds trustplane's container image without a container daemon, the same
# image the Dockerfile at the repository root builds with docker:
#   - one static binary (x86_64-unknown-linux-musl, release), laid out with
#     the rest of the filesystem by deploy/image/rootfs.sh (the Dockerfile runs
#     the same script);
#   - one layer appended to an empty OCI base with go-containerregistry's
#     crane, then user 65532:65532, working directory /home/nonroot,
#     entrypoint /usr/local/bin/trustplane, platform linux/amd64 and the OCI
#     labels set with `crane mutate`.
# Keep this script and the Dockerfile's final stage in step (user, working
# directory, entrypoint, labels); tests/image.rs compares them.
#
#   deploy/image/build.sh OUT             # OUT: the OCI image layout directory to write
#   deploy/image/build.sh --prepare-only  # only install what it needs (./dev test)
#
# Then, for example: `crane push OUT REGISTRY/trustplane:TAG`, or
# `tar -C OUT -cf trustplane.tar . && docker load -i trustplane.tar`.
#
# It installs what it needs first: the musl target (rustup), musl-gcc for
# ring's C code (Debian's musl-tools), strip (binutils), Debian's CA bundle,
# and crane ($CRANE_VERSION, `go install` through the Go module proxy; cached
# in ${TRUSTPLANE_CACHE:-~/.cache/trustplane}/bin). crane only ever pulls and
# pushes to a registry it serves itself on 127.0.0.1 for the length of the
# build (`crane mutate` edits an image in a registry, not in a file).
# The binary goes to the usual cargo target directory (CARGO_TARGET_DIR is
# respected), so a second run only repacks.
set -euo pipefail

CRANE_VERSION="${CRANE_VERSION:-v0.22.1}"
TARGET=x86_64-unknown-linux-musl
HERE="$(cd "$(dirname "$0")" && pwd)"
REPOSITORY="$(cd "$HERE/../.." && pwd)"
CACHE="${TRUSTPLANE_CACHE:-$HOME/.cache/trustplane}"

# The image's configuration; the Dockerfile's final stage says the same.
IMAGE_USER="65532:65532"
IMAGE_WORKDIR="/home/nonroot"
IMAGE_ENTRYPOINT="/usr/local/bin/trustplane"
IMAGE_LABELS=(
  "org.opencontainers.image.title=trustplane"
  "org.opencontainers.image.description=Certificate authority and trust-bundle distribution for Istio multicluster meshes"
  "org.opencontainers.image.licenses=Apache-2.0"
)

log() { echo "[image] $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

[[ $# -eq 1 ]] || { echo "usage: $0 OUT|--prepare-only   # OUT: the OCI image layout directory to write" >&2; exit 2; }
OUT="$1"
if [[ "$OUT" != --prepare-only && -e "$OUT" && ! -f "$OUT/oci-layout" && -n "$(ls -A "$OUT" 2>/dev/null)" ]]; then
  die "$OUT exists and is not an OCI image layout: give a new or empty directory"
fi

SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
apt_install() {
  local missing=()
  for package in "$@"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
  done
  if ((${#missing[@]})); then
    command -v apt-get >/dev/null 2>&1 || die "install ${missing[*]} (no apt-get here), then run $0 again"
    log "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# Rust and the musl target.
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "no cargo: run ./dev test (it installs Rust) or install Rust, then run $0 again"
if command -v rustup >/dev/null 2>&1; then
  if ! rustup target list --installed | grep -qx "$TARGET"; then
    log "adding the Rust target $TARGET (rustup)"
    rustup target add "$TARGET"
  fi
elif [[ ! -d "$(rustc --print sysroot)/lib/rustlib/$TARGET" ]]; then
  die "Rust has no $TARGET standard library and there is no rustup to add it: install rustup (apt-get install rustup), then run $0 again"
fi
command -v musl-gcc >/dev/null 2>&1 || apt_install musl-tools
command -v strip >/dev/null 2>&1 || apt_install binutils
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || apt_install ca-certificates

# crane, built once per version from the Go module proxy. Go >= 1.21 fetches
# the Go that crane's go.mod asks for by itself (GOTOOLCHAIN=auto).
CRANE="$CACHE/bin/crane-$CRANE_VERSION"
if [[ ! -x "$CRANE" ]]; then
  command -v go >/dev/null 2>&1 || apt_install golang-go
  go_version="$(go env GOVERSION 2>/dev/null || true)"
  [[ "$go_version" =~ ^go1\.(2[1-9]|[3-9][0-9]) ]] ||
    die "Go ${go_version:-(unknown)} is too old to build crane (Go 1.21 or newer fetches the rest): run ./dev test, which brings a newer Go, or install one, then run $0 again"
  log "installing crane $CRANE_VERSION (go install through the Go module proxy)"
  mkdir -p "$CACHE/bin" "$CACHE/build"
  gobin="$(mktemp -d "$CACHE/build/crane.XXXXXX")"
  GOTOOLCHAIN=auto GOBIN="$gobin" CGO_ENABLED=0 \
    go install "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION" ||
    die "go install of crane $CRANE_VERSION failed (see above): the image cannot be built without it"
  mv "$gobin/crane" "$CRANE"
  rm -rf "$gobin"
fi
[[ "$("$CRANE" version)" == "$CRANE_VERSION" ]] || die "$CRANE is not crane $CRANE_VERSION: delete it and run $0 again"
[[ "$OUT" == --prepare-only ]] && exit 0

# Run from a test (tests/image.rs under cargo test), the environment holds
# what cargo sets for the crate being tested (CARGO_PKG_*, CARGO_MANIFEST_DIR,
# OUT_DIR, ...). ring's build script watches some of those, so the build
# would differ from one started in a shell and rebuild nearly everything:
# they are dropped for this build.
for variable in $(compgen -e); do
  case "$variable" in
    CARGO_PKG_* | CARGO_MANIFEST_* | CARGO_CRATE_* | CARGO_BIN_* | CARGO_PRIMARY_PACKAGE | \
      CARGO_TARGET_TMPDIR | OUT_DIR)
      unset "$variable" ;;
  esac
done
log "cargo build --release --target $TARGET"
(cd "$REPOSITORY" && cargo build --release --locked --quiet --target "$TARGET")
target_directory="$(cd "$REPOSITORY" && cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
binary="$target_directory/$TARGET/release/trustplane"

work="$(mktemp -d)"
registry_pid=""
cleanup() {
  if [[ -n "$registry_pid" ]]; then
    kill "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

"$HERE/rootfs.sh" "$binary" "$work/rootfs"

# One layer, byte-for-byte the same from the same inputs: sorted names, one
# timestamp, numeric owners (root, except 65532's home).
mtime="${SOURCE_DATE_EPOCH:-0}"
tar_options=(--format=posix "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime"
  --mtime="@$mtime" --numeric-owner --no-recursion -C "$work/rootfs")
(cd "$work/rootfs" && find . -mindepth 1 ! -path ./home/nonroot -printf '%P\n' | LC_ALL=C sort) > "$work/files"
tar --create --file "$work/layer.tar" "${tar_options[@]}" --owner=0 --group=0 --files-from "$work/files"
tar --append --file "$work/layer.tar" "${tar_options[@]}" --owner=65532 --group=65532 home/nonroot

# crane edits images in a registry: its own, in memory, on loopback only.
"$CRANE" registry serve --address 127.0.0.1:0 2> "$work/registry.log" &
registry_pid=$!
port=""
for _ in $(seq 100); do
  port="$(sed -n 's/.*serving on port \([0-9]*\).*/\1/p' "$work/registry.log")"
  [[ -n "$port" ]] && break
  kill -0 "$registry_pid" 2>/dev/null || die "crane registry serve stopped: $(cat "$work/registry.log")"
  sleep 0.1
done
[[ -n "$port" ]] || die "crane registry serve did not say its port: $(cat "$work/registry.log")"

version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$REPOSITORY/Cargo.toml" | head -n1)"
reference="127.0.0.1:$port/trustplane:$version"
label_flags=()
for label in "${IMAGE_LABELS[@]}"; do
  label_flags+=(--label "$label")
done

log "crane append: one layer on an empty OCI base"
"$CRANE" append --oci-empty-base --new_layer "$work/layer.tar" --new_tag "$reference" >/dev/null
log "crane mutate: user $IMAGE_USER, entrypoint $IMAGE_ENTRYPOINT"
"$CRANE" mutate "$reference" --tag "$reference" --set-platform linux/amd64 \
  --user "$IMAGE_USER" --workdir "$IMAGE_WORKDIR" --entrypoint "$IMAGE_ENTRYPOINT" \
  "${label_flags[@]}" >/dev/null
rm -rf "$OUT"
"$CRANE" pull --format oci "$reference" "$OUT"
digest="$("$CRANE" digest "$reference")"
log "wrote $OUT: trustplane $version, $digest, $(du -sh "$OUT" | cut -f1)"
