# ThreatMesh node image. Multi-stage: build with the Rust toolchain, run from
# a slim base as an unprivileged user. No protoc is needed (protox in build.rs).
#
#   docker build -t threatmesh .
#   docker run --rm -v $PWD/org:/data --entrypoint threatmesh threatmesh \
#       init --org cert.example --dir /data \
#       --listen 0.0.0.0:7443 --endpoint threatmesh.cert.example:7443
#   docker run -d -p 7443:7443 -v $PWD/org:/data threatmesh
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin threatmesh

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin threatmesh \
    && mkdir -p /data && chown threatmesh:threatmesh /data
COPY --from=build /src/target/release/threatmesh /usr/local/bin/threatmesh
USER threatmesh:threatmesh
WORKDIR /data
VOLUME ["/data"]
EXPOSE 7443
ENV THREATMESH_CONFIG=/data/threatmesh.toml
ENTRYPOINT ["threatmesh", "serve"]
