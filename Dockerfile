# syntax=docker/dockerfile:1
# One image with the three service binaries. Nothing runs by default: compose.yaml and k8s/
# choose the binary and its subcommand (`switchyard-ingress serve`, `switchyard-worker migrate`, …).
#
#   docker build -t switchyard:dev .
#
# Needs BuildKit (the default builder of current Docker) for the cache mounts below: the cargo
# registry and target/ survive between builds, so a source change recompiles only our crates.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# target/ lives in a cache mount, which is gone after this step: copy the binaries out of it.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
        -p switchyard-ingress -p switchyard-worker -p switchyard-notifier \
 && mkdir -p /out \
 && cp target/release/switchyard-ingress target/release/switchyard-worker \
       target/release/switchyard-notifier /out/

# glibc, libgcc and CA certificates (rustls reads the system roots), no shell, no package
# manager. The `nonroot` variant runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="switchyard" \
      org.opencontainers.image.description="Self-hosted API triggers for AI agents: ingress, worker, notifier" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
# The ingress listens on 8080 (SWITCHYARD_INGRESS_LISTEN); the worker and the notifier serve
# /metrics, /healthz and /readyz on 9100 (SWITCHYARD_OPS_LISTEN). Both are set by compose and k8s.
EXPOSE 8080 9100
CMD ["switchyard-ingress", "--help"]
