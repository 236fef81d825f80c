# latch container image. Build: docker build -t latch .
# Run: mount a config at /etc/latch/latch.toml (listening on 0.0.0.0, no demo secrets) and
# a volume at /var/lib/latch for the embedded store; see deploy/compose/ for a cluster.

# Build stage: the release binary, built with the lockfile.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin latch \
    && install -m 0755 target/release/latch /usr/local/bin/latch

# Runtime stage: Debian slim with CA certificates, the binary and an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=20230311* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/latch --shell /usr/sbin/nologin latch \
    && mkdir -p /etc/latch /var/lib/latch \
    && chown latch:latch /var/lib/latch
COPY --from=build /usr/local/bin/latch /usr/local/bin/latch
USER 10001:10001
WORKDIR /var/lib/latch
ENV LATCH_CONFIG=/etc/latch/latch.toml \
    LATCH_STORE__PATH=/var/lib/latch \
    LATCH_LOG=info
VOLUME ["/etc/latch", "/var/lib/latch"]
EXPOSE 8080 9090
# /readyz: 200 only while a key signs and the revocation state is fresh.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["latch", "healthcheck", "--timeout", "2s"]
ENTRYPOINT ["latch"]
CMD ["serve"]
