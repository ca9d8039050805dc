# syntax=docker/dockerfile:1
# ThreatMesh node image. Multi-stage: build with the Rust toolchain, run from
# a slim base as an unprivileged user. No protoc is needed (protox in
# build.rs). Base images are pinned by digest (the tag says which release the
# digest is); update both together.
#
#   docker build -t threatmesh .
#   docker run --rm -v $PWD/org:/data --entrypoint threatmesh threatmesh \
#       init --org cert.example --dir /data \
#       --listen 0.0.0.0:7443 --endpoint threatmesh.cert.example:7443 --dns-name threatmesh.cert.example
#   docker run -d -p 7443:7443 -v $PWD/org:/data threatmesh
#
# Three organisations at once: deploy/compose.yaml.
FROM rust:1.97.1-slim-bookworm@sha256:158b745f1b82dbeec7ea06e6b1617d6b005723bb66e6141cd2ddfee40d079ec3 AS build
WORKDIR /src
# Dependencies are downloaded in a layer of their own, rebuilt only when
# Cargo.toml or Cargo.lock change; compiled artefacts stay in a build cache
# between builds, so a change to src/ recompiles the crate, not its
# dependencies.
COPY Cargo.toml Cargo.lock build.rs ./
COPY .cargo .cargo
RUN mkdir -p src && touch src/lib.rs && echo 'fn main() {}' > src/main.rs \
    && cargo fetch --locked \
    && rm -rf src
COPY proto proto
COPY migrations migrations
COPY config config
COPY src src
# Stripped: symbols are for profiling a local build, not for the image.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --offline --bin threatmesh \
    && install -D -m 0755 target/release/threatmesh /out/threatmesh

FROM debian:bookworm-20260918-slim@sha256:3783cc01769c7b2b1b83a5c5ad96c815348e28ed7da68e2e3687004faa906251
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin threatmesh \
    && mkdir -p /data /cards && chown threatmesh:threatmesh /data /cards
COPY --from=build /out/threatmesh /usr/local/bin/threatmesh
USER threatmesh:threatmesh
WORKDIR /data
VOLUME ["/data"]
EXPOSE 7443
ENV THREATMESH_CONFIG=/data/threatmesh.toml
# Metrics and probes inside the container only; publish the port, or set
# THREATMESH__METRICS__LISTEN=0.0.0.0:9464, to let Prometheus scrape it.
ENV THREATMESH__METRICS__LISTEN=127.0.0.1:9464
# Healthy once the node's store answers (/readyz), with bash's /dev/tcp: the
# slim image has no HTTP client, and needs none.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9464 && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["threatmesh", "serve"]
