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
# The image holds the production build (--no-default-features): no `stub`, no `demo` subcommand.

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
# the binary is copied out of the cached target dir in the same step.
RUN --mount=type=cache,id=chatbot-proxy-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=chatbot-proxy-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=chatbot-proxy-target,target=/src/target,sharing=locked \
    cargo build --release --locked --no-default-features --bin chatbot-proxy \
 && install -D -m 0755 target/release/chatbot-proxy /out/chatbot-proxy

FROM docker.io/library/debian:${DEBIAN_RELEASE}-slim
# ca-certificates: TLS to the OpenAI API and to the SMTP server (native root store).
# A user with a fixed numeric id (10001, above any host's usual range) so volumes and
# runAsNonRoot can rely on it; no password, no login shell.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 chatbot-proxy \
 && useradd --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/chatbot-proxy --shell /usr/sbin/nologin chatbot-proxy \
 && install -d -m 0750 -o 10001 -g 10001 /var/lib/chatbot-proxy \
 && install -d -m 0755 /etc/chatbot-proxy
COPY --from=builder /out/chatbot-proxy /usr/local/bin/chatbot-proxy

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
# No curl in the image: bash's /dev/tcp sends the request, `read -t` bounds the wait.
# It probes ${PORT:-3000}; in TOML mode with another listen port, set PORT to that port too.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PORT:-3000} && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && IFS= read -r -t 4 status <&3 && [[ $status == 'HTTP/1.'?' 200 '* ]]"]

# The binary is PID 1 and handles SIGTERM itself (the default stop signal, kept): it stops
# accepting, lets streams in flight finish and exits as soon as none is left, at most
# grace_period_seconds (0) + drain_timeout_seconds (25) later: use `docker stop -t 30`.
ENTRYPOINT ["/usr/local/bin/chatbot-proxy"]
CMD []
