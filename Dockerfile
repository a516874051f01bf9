# syntax=docker/dockerfile:1
# weir's container image: built with the same command as a release build outside Docker
# (`cargo build --release --locked`, so the binary is the one `cargo build --release` makes from
# Cargo.lock), then copied into a small distroless image that has glibc and libgcc (weir links
# them; TLS is rustls, so no OpenSSL) and nothing else: no shell, no package manager.
#
#   docker build -t weir:local .
#   docker run --rm -p 9090:9090 -v /var/log/app:/logs:ro weir:local run '/logs/*.log'

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# The registry cache only speeds up rebuilds; it is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked
# Directories the non-root user owns in the final image: /logs for the demo's shared log volume,
# /var/lib/weir for checkpoints, alert state and disk buffers (--data-dir).
RUN mkdir -p /staging/empty

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /src/target/release/weir /usr/local/bin/weir
COPY --from=builder --chown=65532:65532 /staging/empty /var/lib/weir
COPY --from=builder --chown=65532:65532 /staging/empty /logs
# distroless's "nonroot" user.
USER 65532:65532
WORKDIR /var/lib/weir
# /metrics, /health, /ready, /alerts (METRICS_PORT or --listen change it). The admin endpoints
# (/tap, /stats, /-/reload) listen on 127.0.0.1:9190 inside the container, not exposed:
# `docker exec CONTAINER weir top` / `kubectl exec POD -c weir -- weir tap` reach them.
EXPOSE 9090
# No shell or curl here: weir asks itself (GET /health on 127.0.0.1:$METRICS_PORT, else 9090).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/weir", "health"]
ENTRYPOINT ["/usr/local/bin/weir"]
# Read stdin with the embedded default pipeline; give other arguments to `docker run`.
CMD ["run"]
