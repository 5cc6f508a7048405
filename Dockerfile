# syntax=docker/dockerfile:1.7
#
# One image for every subcommand: `run` (the default), `sim`, `demo`, `enqueue`, `dead-letters`.
#
#   docker build -t guest-session-worker .
#   docker run --rm guest-session-worker --help
#
# Stages: `chef` (the toolchain plus cargo-chef), `planner` (the dependency recipe: manifests and
# lockfile only), `build` (dependencies first, in their own layer, then the crate), `runtime`.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS chef
# The TLS stack (rustls with aws-lc-rs, pulled by lapin and reqwest) builds aws-lc-sys from C with
# the `cc` crate: the gcc and libc6-dev of this image are all it needs on x86_64 and aarch64 Linux
# (pregenerated bindings, no cmake, no nasm outside FIPS builds).
RUN cargo install cargo-chef --locked --version ^0.1
WORKDIR /build

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
# Dependencies only: this layer is rebuilt when Cargo.toml or Cargo.lock change, not when src/
# does. The cache mounts keep downloaded crates between builds on the same builder.
COPY --from=planner /build/recipe.json recipe.json
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo chef cook --release --recipe-path recipe.json
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo build --release --locked --bin guest-session-worker \
 && install -D -m 0755 target/release/guest-session-worker /out/guest-session-worker

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: Genesys Cloud and amqps brokers are reached over TLS with the system roots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/guest-session-worker /usr/local/bin/guest-session-worker
COPY --chmod=0755 deploy/docker/http-probe.sh /usr/local/bin/http-probe

# Not root, and nothing to write: the worker keeps no files, so it runs with a read-only root
# filesystem (deploy/base/deployment.yaml sets that and the same uid).
USER 10001:10001
ENV HEALTH_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json \
    RUST_LOG=info
EXPOSE 8080

# /healthz on HEALTH_ADDR's port. Debian slim rather than distroless: distroless has no shell and
# no HTTP client, and the probe here is a few lines of bash (/dev/tcp), with no package added.
# `sim` listens elsewhere (SIM_ADDR) and `demo`/`enqueue` serve no health endpoint: override the
# check for those (docker-compose.yml does for `sim`), e.g. `docker run --no-healthcheck ... demo`.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["http-probe"]

ENTRYPOINT ["guest-session-worker"]
CMD ["run"]
