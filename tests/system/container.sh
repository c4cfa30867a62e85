#!/usr/bin/env bash
# System test: the container image (top-level Dockerfile), built and run. Loopback only.
#
#   bash tests/system/container.sh [DIST_DIR]     (default target/dist; as root)
#
# 1. debian:bookworm-slim, the Dockerfile's base, is made here rather than pulled (CI
#    reaches no container registry): a Debian bookworm minbase rootfs from mmdebstrap
#    (cached under target/system/), `podman import`ed and tagged with that name.
# 2. `buildah bud --pull=never` builds the Dockerfile with the repository root as the
#    context (.dockerignore lets in only DIST_DIR's binary and config/container.toml).
# 3. `podman run --network host` (runc, cgroupfs) with a loopback-only config mounted
#    over /etc/gatehouse/gatehouse.toml: /healthz on the admin listener (127.0.10.1:29100)
#    answers 200, a connection through 127.0.10.1:24443 reaches an echo server that
#    tests/system/drive.py runs on the host's loopback, gatehouse runs as uid 65532;
#    SIGTERM (`podman kill -s TERM`): accepting stops, the open connections keep working
#    until they close, then the container exits 0 (`podman wait`).
# Host packages: podman buildah runc mmdebstrap python3. Outside CI, without root or one
# of them it prints "SKIPPED: why" and exits 0; with CI set that is a failure.
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$repo"
started=$SECONDS

name=gatehouse-systest-image-$$
image=localhost/gatehouse-systest:$$
cfg=$work/container-$$.toml
cleanup() {
    local rc=$?
    cleanup_parts
    if [[ -z ${PODMAN+x} ]]; then
        exit "$rc"
    fi
    if (( rc != 0 )) && "${PODMAN[@]}" container exists "$name" 2>/dev/null; then
        say "--- podman logs (for the failure above)"
        "${PODMAN[@]}" logs "$name" 2>&1 | grep -vE ' [a-z-]+/echo/echo-[a-c] ' | tail -20 || true
    fi
    "${PODMAN[@]}" rm -f -t 0 "$name" >/dev/null 2>&1 || true
    "${PODMAN[@]}" rmi -f "$image" >/dev/null 2>&1 || true
    rm -f "$cfg"
    [[ ${context:-.} == . ]] || rm -rf "$context"
    [[ -n ${DRIVER_PID:-} ]] && kill "$DRIVER_PID" 2>/dev/null
    [[ -n ${ECHO_PID:-} ]] && kill "$ECHO_PID" 2>/dev/null
    say "container image test: $((SECONDS - started))s in all"
    exit "$rc"
}
trap cleanup EXIT
# Killed or interrupted: through exit, so that the EXIT trap cleans up.
trap 'exit 143' TERM
trap 'exit 130' INT

dist=${1:-target/dist}
require_root_and_tools podman buildah runc mmdebstrap python3
[[ -x $dist/gatehouse ]] || fail "no $dist/gatehouse (run deploy/dist.sh first)"

setup_podman
remove_stale gatehouse-systest-image-

# --- 1. the base image ----------------------------------------------------------------
rootfs_image slim ""
for tag in docker.io/library/debian:bookworm-slim localhost/debian:bookworm-slim; do
    "${PODMAN[@]}" tag "$IMAGE" "$tag"
done
say "debian:bookworm-slim = $IMAGE (made by mmdebstrap, not pulled)"

# --- 2. build -----------------------------------------------------------------------------
# The context is the repository root, as documented, unless DIST_DIR is elsewhere: then a
# copy of the files the Dockerfile names, laid out the same way.
context=.
if [[ $(readlink -f "$dist/gatehouse") != $(readlink -f target/dist/gatehouse 2>/dev/null || true) ]]; then
    context=$work/context-$$
    install -D -m 0755 "$dist/gatehouse" "$context/target/dist/gatehouse"
    install -D -m 0644 config/container.toml "$context/config/container.toml"
    cp Dockerfile .dockerignore "$context/"
fi
t0=$SECONDS
"${BUILDAH[@]}" bud --quiet --pull=never --layers=false -t "$image" "$context" >/dev/null ||
    fail "buildah bud failed"
size=$("${PODMAN[@]}" image inspect -f '{{.Size}}' "$image")
say "buildah bud: $image built in $((SECONDS - t0))s, $((size / 1000000)) MB"
config=$("${PODMAN[@]}" image inspect -f 'user={{.Config.User}} entrypoint={{.Config.Entrypoint}} cmd={{.Config.Cmd}} stopsignal={{.Config.StopSignal}}' "$image")
say "  $config"
[[ $config == "user=65532:65532 entrypoint=[/usr/local/bin/gatehouse] cmd=[--config /etc/gatehouse/gatehouse.toml] stopsignal=SIGTERM" ]] ||
    fail "unexpected image config: $config"
# What the build context let in: the image holds exactly the binary that was built and
# the container config (byte for byte).
"${PODMAN[@]}" run --rm --network none "${ULIMITS[@]}" --entrypoint /bin/sh "$image" -c \
    'sha256sum /usr/local/bin/gatehouse /etc/gatehouse/gatehouse.toml' > "$work/image-sums-$$"
want=$(sha256sum "$dist/gatehouse" config/container.toml | awk '{print $1}')
got=$(awk '{print $1}' "$work/image-sums-$$")
rm -f "$work/image-sums-$$"
[[ $got == "$want" ]] || fail "the image's binary or config differs from $dist/gatehouse, config/container.toml"
say "  /usr/local/bin/gatehouse and /etc/gatehouse/gatehouse.toml are $dist/gatehouse and config/container.toml"
"${PODMAN[@]}" run --rm --network none "${ULIMITS[@]}" "$image" check --config /etc/gatehouse/gatehouse.toml >/dev/null ||
    fail "gatehouse check rejects the image's own config"
say "  gatehouse check accepts the image's default config"

# --- 3. run ---------------------------------------------------------------------------
# A second listener on 127.0.10.1:981: a port below 1024, as 80 and 443 on gallade.
low_port=981
python3 "$systest_dir/drive.py" config --net 10 --low-port "$low_port" > "$cfg"
chmod 0644 "$cfg"
start_echo 10
# The options of deploy/podman/gatehouse.container: host network, no capability but
# NET_BIND_SERVICE, no new privileges, read-only root.
say "podman run $image with $(basename "$cfg") (loopback only) over /etc/gatehouse/gatehouse.toml"
"${PODMAN[@]}" run -d --name "$name" --network host "${ULIMITS[@]}" \
    --cap-drop all --cap-add NET_BIND_SERVICE --security-opt no-new-privileges --read-only \
    -v "$cfg:/etc/gatehouse/gatehouse.toml:ro" "$image" >/dev/null
# In the background and waited for, so that a TERM or INT reaches the EXIT trap at once
# (bash runs traps only between commands); the trap ends the driver too.
python3 "$systest_dir/drive.py" image --container "$name" --podman "${PODMAN[*]}" --low-port "$low_port" &
DRIVER_PID=$!
rc=0
wait "$DRIVER_PID" || rc=$?
DRIVER_PID=
(( rc == 0 )) || exit "$rc"
say "--- podman logs (the lines other than close lines)"
"${PODMAN[@]}" logs "$name" 2>&1 | grep -vE ' [a-z-]+/echo/echo-[a-c] ' | tail -12 | sed 's/^/  /'
say "container: 1 passed, 0 failed"
