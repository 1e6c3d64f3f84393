# raftgate's container image: `docker build -t REGISTRY/raftgate:0.1.0 .` (docs/deploy.md).
# The binary links glibc dynamically, so the runtime is the builder's Debian release. The
# Kubernetes manifests start it through a /bin/sh script (start.sh, in the ConfigMap), so the
# runtime image needs a shell, sed and grep: debian-slim rather than distroless.

FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
# The shipped build (docs/build.md): the `dist` profile, profile-guided. The script installs
# wrk and curl for its training run and adds rustup's llvm-tools.
RUN scripts/build-pgo.sh \
    && install -m 0755 target/dist/raftgate /usr/local/bin/raftgate

FROM debian:bookworm-slim
COPY --from=build /usr/local/bin/raftgate /usr/local/bin/raftgate
# Raft data (raft.data_dir's default); a volume in any real deployment.
RUN mkdir -p /var/lib/raftgate /etc/raftgate
# HTTP, HTTPS, Raft peers; the admin API (10254) listens on loopback by default.
EXPOSE 80 443 7946
ENTRYPOINT ["/usr/local/bin/raftgate"]
# Without arguments: the built-in defaults and demo route. Real use: run --config FILE.
CMD ["run"]
