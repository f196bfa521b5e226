#!/usr/bin/env bash
# Lays out the container image's whole filesystem in DIR: the one file list
# both ways of building the image use, so they cannot drift apart. The
# Dockerfile's builder stage runs it and its final stage copies DIR onto
# `scratch`; deploy/image/build.sh runs it and packs DIR into one layer.
#
#   deploy/image/rootfs.sh BINARY DIR
#
# BINARY is the static musl build of trustplane. The filesystem holds:
#   /usr/local/bin/trustplane           the binary (stripped), root-owned 0755
#   /etc/passwd, /etc/group             root, nobody and nonroot (65532)
#   /etc/ssl/certs/ca-certificates.crt  Debian's CA bundle: the Kubernetes
#                                       and Vault clients (rustls' platform
#                                       verifier) trust the system store
#                                       when no CA file is given
#   /home/nonroot                       65532's home and working directory, 0700
#   /tmp                                1777 (`trustplane demo` uses it)
# and nothing else: no shell, no libc, no package manager.
#
# Ownership: run as root (the Dockerfile) and /home/nonroot is chowned to
# 65532; run as anyone else and build.sh sets the owners in the layer's tar
# headers instead. Everything else belongs to root.
set -euo pipefail

[[ $# -eq 2 ]] || { echo "usage: $0 BINARY DIR" >&2; exit 2; }
binary="$1"
root="$2"
here="$(cd "$(dirname "$0")" && pwd)"
certificates=/etc/ssl/certs/ca-certificates.crt

[[ -f "$binary" ]] || { echo "error: no binary at $binary: build it first (cargo build --release --target x86_64-unknown-linux-musl)" >&2; exit 1; }
[[ -f "$certificates" ]] || { echo "error: no $certificates: apt-get install ca-certificates" >&2; exit 1; }

rm -rf "$root"
install -d -m 0755 "$root" "$root/etc" "$root/etc/ssl" "$root/etc/ssl/certs" \
  "$root/usr" "$root/usr/local" "$root/usr/local/bin" "$root/home"
install -m 0644 "$here/rootfs/etc/passwd" "$here/rootfs/etc/group" "$root/etc/"
install -m 0644 "$certificates" "$root/etc/ssl/certs/ca-certificates.crt"
install -m 0755 "$binary" "$root/usr/local/bin/trustplane"
strip --strip-all "$root/usr/local/bin/trustplane"
install -d -m 0700 "$root/home/nonroot"
install -d -m 1777 "$root/tmp"
if [[ $(id -u) -eq 0 ]]; then
  chown 65532:65532 "$root/home/nonroot"
fi
