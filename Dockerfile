# syntax=docker/dockerfile:1
#
# gatehouse container image: build with `docker build -t gatehouse .` (BuildKit).
#
# Run, for example:
#   docker run -d --name gatehouse -p 6443:6443 -p 80:80 -p 443:443 -p 9100:9100 \
#     --stop-timeout 45 gatehouse
# --stop-timeout: gatehouse drains for up to drain_timeout (30s by default) on SIGTERM;
# Docker's default of 10s would SIGKILL it mid-drain.
#
# This image is for containers only. Its binary is built on Debian 12 and
# references glibc symbols up to GLIBC_2.34 (objdump -T), so it would not run on
# EL8. For hosts, use the RPM and portable binary (glibc >= 2.28) that
# `bash deploy/dist.sh` builds; see docs/deploy-gallade.md.

# The builder must use the same Debian release as the runtime image below, so the
# binary needs no newer glibc than the one it runs on.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target/ between builds, so a source change
# recompiles gatehouse and not its dependencies. target/ lives only in the cache,
# so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
 && install -D -m 0755 target/release/gatehouse /out/gatehouse

# distroless/cc: glibc, libgcc and CA certificates, no shell or package manager.
# gatehouse needs nothing else (TLS health checks use rustls with ring).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/gatehouse /usr/local/bin/gatehouse
# The container config binds all interfaces; config/local.toml binds 127.0.0.1,
# which nothing outside the container could reach.
COPY config/container.toml /etc/gatehouse/gatehouse.toml
# 65532 ("nonroot"). Binding 80 and 443 still works without root: Docker 20.10+
# sets net.ipv4.ip_unprivileged_port_start=0 inside the container's network
# namespace. With --network=host that sysctl is the host's (1024 by default),
# and --cap-add alone does not help a non-root user (Docker grants no ambient
# capabilities), so there use ports >= 1024 or
# `--user 0 --cap-drop ALL --cap-add NET_BIND_SERVICE`.
USER 65532:65532
EXPOSE 6443 80 443 9100
# No HEALTHCHECK: the image has no shell or curl; probe the admin listener from
# outside (orchestrator TCP/HTTP check on 9100) instead.
ENTRYPOINT ["/usr/local/bin/gatehouse"]
CMD ["--config", "/etc/gatehouse/gatehouse.toml"]
