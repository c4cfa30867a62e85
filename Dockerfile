# gatehouse container image: the portable release binary on Debian 12 (bookworm-slim),
# run as a non-root user, with config/container.toml as /etc/gatehouse/gatehouse.toml.
#
# Nothing is compiled here: the image copies target/dist/gatehouse, the binary that
# deploy/dist.sh builds (glibc >= 2.28, checked by deploy/check-dist.sh) and the RPM
# ships. So the build context is the repository root, and .dockerignore keeps it to the
# two files copied below. Build:
#
#   bash deploy/dist.sh
#   buildah bud -t gatehouse .          # or: podman build -t gatehouse .
#                                       # or: docker build -t gatehouse .
#
# CI builds it with `buildah bud --pull=never` from a debian:bookworm-slim that it makes
# itself (mmdebstrap), runs it with podman, and checks /healthz, forwarding and a clean
# drain on SIGTERM: tests/system/container.sh.
#
# Run, for example (mount your own config over /etc/gatehouse, e.g. config/gallade.toml
# with its certificates; the default one forwards to gallade's Pi network):
#   podman run -d --name gatehouse --network host --stop-timeout 45 \
#     -v /etc/gatehouse:/etc/gatehouse:ro,Z gatehouse
#   docker run -d --name gatehouse -p 6443:6443 -p 80:80 -p 443:443 -p 8405:8405 \
#     --stop-timeout 45 gatehouse
# --stop-timeout: on SIGTERM gatehouse stops accepting and drains for up to
# drain_timeout (30s by default) before it exits 0; the default of 10s would SIGKILL
# it mid-drain. As a systemd service on a Rocky/EL9 host: deploy/podman/gatehouse.container.
#
# Ports 80 and 443 as a non-root user: in a network namespace of its own the container
# gets net.ipv4.ip_unprivileged_port_start=0 from Docker (20.10+); with --network host
# that sysctl is the host's (1024 by default), so add the capability:
# `--cap-drop ALL --cap-add NET_BIND_SERVICE` (podman also makes an added capability
# ambient for a non-root user; Docker does not, there use ports >= 1024 or --user 0).

FROM debian:bookworm-slim
COPY target/dist/gatehouse /usr/local/bin/gatehouse
# The container config binds all interfaces; config/local.toml binds 127.0.0.1, which
# nothing outside the container's network namespace could reach.
COPY config/container.toml /etc/gatehouse/gatehouse.toml
# A fixed uid without a passwd entry (as distroless "nonroot"): gatehouse needs no
# name, home or shell. The config is world-readable in the image; a mounted one must be
# readable by 65532 (or run with --user and a group that can read it).
USER 65532:65532
EXPOSE 6443 80 443 8405
# gatehouse drains on SIGTERM (also podman's and Docker's default stop signal).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gatehouse"]
CMD ["--config", "/etc/gatehouse/gatehouse.toml"]
