# chatbot-proxy container image.
#
# Build:  docker build -t chatbot-proxy .
#         (podman/buildah: add `--format docker`, else HEALTHCHECK is dropped from the OCI image)
# Run, env mode (the default CMD: no arguments; variables as in the old service's .env):
#   docker run -p 3000:3000 -e DOMAINS='["acme.com"]' -e OPENAI_API_KEYS='["sk-..."]' \
#     -e ASSISTANT_IDS='["asst_..."]' chatbot-proxy
# Run, TOML mode (the file is the whole configuration):
#   docker run -p 3000:3000 -v ./chatbot-proxy.toml:/etc/chatbot-proxy/chatbot-proxy.toml:ro \
#     chatbot-proxy --config /etc/chatbot-proxy/chatbot-proxy.toml
# Check a configuration: `... chatbot-proxy --config FILE --test`.
# The image holds the production build (--no-default-features): no `stub`, no `demo` subcommand,
# stripped, on distroless/cc: under 40 MB. Health: `chatbot-proxy --health-check` (no shell).
# Without a registry (this project's CI machine): scripts/docker-base-images builds stand-ins for
# the two base images, then: buildah --storage-driver vfs bud --isolation chroot --format docker -t chatbot-proxy .

# Builder and runtime must share one Debian release: the binary links the builder's glibc.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
# cmake (+ make, its default generator): every Pingora TLS backend builds zlib-ng with it.
# gcc and libc6-dev come with the rust:*-slim image.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# --no-default-features: the production binary, without the bundled stub OpenAI upstream
# (the workspace's stub/ crate is still in the context: cargo reads every member's manifest).
# --locked: exactly the versions in Cargo.lock, or fail. The cache mounts (BuildKit, and
# buildah/podman) only keep downloaded crates and compiled dependencies between builds;
# the binary is copied out of the cached target dir in the same step. Stripped (its symbol
# tables out: 17.7 MB -> 14.4 MB); the host's release builds keep them for profiling.
ENV CARGO_PROFILE_RELEASE_STRIP=true
RUN --mount=type=cache,id=chatbot-proxy-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=chatbot-proxy-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=chatbot-proxy-target,target=/src/target,sharing=locked \
    cargo build --release --locked --no-default-features --bin chatbot-proxy \
 && install -D -m 0755 target/release/chatbot-proxy /out/chatbot-proxy \
 && install -d -m 0750 /out/state/chatbot-proxy \
 && install -d -m 0755 /out/etc

# The runtime: distroless/cc (glibc, libgcc_s, CA certificates, tzdata; no shell, no package
# manager). Its Debian version must be DEBIAN_RELEASE's (bookworm is 12).
FROM gcr.io/distroless/cc-debian12
COPY --from=builder /out/chatbot-proxy /usr/local/bin/chatbot-proxy
# The data dir, mode 0750, owned by the non-root user 10001 (no shell here to create it: made
# in the builder, copied as a directory so its mode stays). 10001 has no /etc/passwd entry (the
# binary needs none); the distroless user `nonroot` (65532) is left unused, so volumes made for
# earlier images keep their owner.
COPY --from=builder --chown=10001:10001 /out/state/ /var/lib/
COPY --from=builder /out/etc/ /etc/chatbot-proxy/

LABEL org.opencontainers.image.title="chatbot-proxy" \
      org.opencontainers.image.description="Edge proxy on Pingora that lets websites embed an OpenAI chatbot widget without exposing the API key" \
      org.opencontainers.image.licenses="Apache-2.0"

# The working dir is the data dir: relative paths (`data/`, a `.env` file in env mode) land
# in the volume, owned by the non-root user.
WORKDIR /var/lib/chatbot-proxy
VOLUME ["/var/lib/chatbot-proxy"]
USER 10001:10001

# Default listen address 0.0.0.0:3000; PORT changes it in env mode.
EXPOSE 3000
# No shell or curl in the image: the binary probes itself (GET /healthz on 127.0.0.1, 2 s
# bounds). It probes $PORT, else 3000; in TOML mode with another listen port, set PORT to that
# port too (TOML mode ignores PORT otherwise), or override the check with `--health-check ADDR`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/chatbot-proxy", "--health-check"]

# The binary is PID 1 and handles SIGTERM itself (the default stop signal, kept): it stops
# accepting, lets streams in flight finish and exits as soon as none is left, at most
# grace_period_seconds (0) + drain_timeout_seconds (25) later: use `docker stop -t 30`.
ENTRYPOINT ["/usr/local/bin/chatbot-proxy"]
CMD []
