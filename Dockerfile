# trustplane's container image: one static binary on an empty base, run as
# the non-root user 65532, no shell.
#
#   docker build -t trustplane .
#   docker run --rm trustplane --version
#
# Without a container daemon, deploy/image/build.sh builds the same image
# with crane (tests/image.rs builds, unpacks and runs it). Keep the two in
# step: both lay out the filesystem with deploy/image/rootfs.sh, and the final
# stage's USER, WORKDIR, ENTRYPOINT and LABELs must match build.sh's IMAGE_*
# settings (tests/image.rs compares them).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
# musl-gcc compiles ring's C and assembly for the static target; the CA
# bundle and strip are used by rootfs.sh. Debian's versions are not pinned:
# a point release replaces them (and the CA bundle should be current).
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      musl-tools ca-certificates binutils \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
 && deploy/image/rootfs.sh target/x86_64-unknown-linux-musl/release/trustplane /rootfs

FROM scratch
# rootfs.sh ran as root, so /home/nonroot already belongs to 65532 and all
# else to root; COPY --from keeps those owners.
COPY --from=builder /rootfs/ /
USER 65532:65532
WORKDIR /home/nonroot
ENTRYPOINT ["/usr/local/bin/trustplane"]
LABEL org.opencontainers.image.title="trustplane"
LABEL org.opencontainers.image.description="Certificate authority and trust-bundle distribution for Istio multicluster meshes"
LABEL org.opencontainers.image.licenses="Apache-2.0"
