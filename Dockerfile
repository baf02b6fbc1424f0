# syntax=docker/dockerfile:1
#
# prscd container image: a release build of the `prscd` binary on a small,
# non-root runtime (distroless/cc: glibc, libgcc, CA roots; no shell).
#
#   docker build -t prscd .
#   docker run --rm --network host --env-file env.example prscd
#
# One port (PORT, 8443 by default) on TCP (WebSocket over TLS, /health,
# /metrics) and UDP (WebTransport/HTTP3); the image also turns on the plain-HTTP
# /health and /metrics on METRICS_PORT=9464, which the HEALTHCHECK reads.
# Certificates, APPS_FILE and a zenoh config are mounted read-only (see
# deploy/README.md). Stop with at least 10 s of grace (`docker stop` default):
# a draining node takes up to DRAIN_GRACE_MS + DRAIN_TIMEOUT_MS + ~2 s.

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

# ---- build -----------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS build
WORKDIR /src

# The workspace's manifests and sources (cargo reads every member's manifest,
# though `-p prscd` compiles the node and its crates alone). Compiled
# dependencies live in a cache mount of target/, so a rebuild after a source
# change recompiles only what changed, without a stub crate.
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY tools ./tools
# The embedded zenoh default is mesh/p2p/node.json5 (include_str!).
COPY mesh/p2p/node.json5 ./mesh/p2p/node.json5
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p prscd \
 && mkdir -p /out/state \
 && objcopy --strip-debug target/release/prscd /out/prscd

# The HEALTHCHECK probe: one std-only file, no dependencies.
COPY deploy/docker/healthcheck.rs /tmp/healthcheck.rs
RUN rustc --edition 2021 -O -C strip=symbols -o /out/prscd-healthcheck /tmp/healthcheck.rs

# ---- runtime ---------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="prscd" \
      org.opencontainers.image.description="Presencejs v2 backend: WebTransport + WebSocket presence node, meshed over zenoh" \
      org.opencontainers.image.licenses="MIT"

COPY --from=build /out/prscd /out/prscd-healthcheck /usr/local/bin/
# Working directory: pid file and (dev only) the generated certificate.
COPY --from=build --chown=65532:65532 /out/state /var/lib/prscd
WORKDIR /var/lib/prscd
# distroless' `nonroot` user; never root.
USER 65532:65532

ENV HOST=0.0.0.0 \
    PORT=8443 \
    METRICS_PORT=9464 \
    PID_FILE=/var/lib/prscd/prscd.pid \
    DEV_CERT_DIR=/var/lib/prscd/.prscd-dev

EXPOSE 8443/tcp 8443/udp 9464/tcp

# Plain HTTP GET /health on METRICS_PORT (200 healthy; 503 while draining).
# The probe is the std-only program above: the image has no shell or curl,
# and /health on PORT is TLS-only. It connects to HOST (loopback when HOST
# binds every address); without METRICS_PORT it only checks that PORT accepts
# TCP connections.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/prscd-healthcheck"]

# SIGTERM drains: /health 503, peers told (peer_offline), exit within
# DRAIN_GRACE_MS + DRAIN_TIMEOUT_MS (+ ~2 s closing QUIC and zenoh).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/prscd"]
