# Shared by tests/system/systemd.sh and tests/system/container.sh (sourced, not run).
#
# What the two need: root, podman/buildah/mmdebstrap/runc (Debian packages of those
# names), a Debian rootfs (made once by mmdebstrap, cached), and private container
# storage. Outside CI a missing piece prints "SKIPPED: why" and exits 0; with CI set
# it is a failure.
#
# Container storage and podman's own state live under target/system/ (vfs driver:
# works on any file system, no overlay or fuse needed), apart from whatever else the
# machine keeps in /var/lib/containers. Delete target/system/ to start from scratch
# (that also refetches the Debian packages of the cached root file systems).
# shellcheck shell=bash

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
systest_dir=$repo/tests/system
work=$repo/target/system

say() { printf '%s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
skip() {
    if [[ -n ${CI:-} ]]; then
        echo "FAIL: ${0##*/} would skip in CI: $*" >&2
        exit 1
    fi
    echo "SKIPPED: $*"
    exit 0
}

require_root_and_tools() {
    [[ $(id -u) == 0 ]] || skip "needs root (podman with runc, systemd in a container)"
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null ||
            skip "$t not found (Debian: apt-get install podman buildah mmdebstrap runc python3)"
    done
}

# Podman and buildah with the private storage. The runtime flags are the ones that work
# on CI's machine: crun refuses its cgroup setup, runc works; cgroupfs because no
# systemd runs as the host's PID 1 there; events to a file for the same reason.
setup_podman() {
    mkdir -p "$work"
    # Podman's run root, locks and events, under /run (per boot): one per storage, as the
    # storage's database records it (CI runs in a fresh clone beside the work tree).
    [[ -s $work/run-root ]] || echo "/run/gatehouse-systest-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')" > "$work/run-root"
    run_root=$(cat "$work/run-root")
    mkdir -p "$run_root"
    cat > "$work/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$work/storage"
runroot = "$run_root/storage"
EOF
    # Podman's own state (container database, locks) beside the storage, not in /run/libpod.
    cat > "$work/containers.conf" <<EOF
[engine]
tmp_dir = "$run_root/libpod"
events_logfile_path = "$run_root/events.log"
EOF
    export CONTAINERS_STORAGE_CONF=$work/storage.conf CONTAINERS_CONF=$work/containers.conf
    PODMAN=(podman --runtime runc --cgroup-manager cgroupfs --events-backend file)
    # podman's default limits for a container (nofile 1048576, ...) are above the hard
    # limits of CI's sandbox, which has no CAP_SYS_RESOURCE to raise them: runc then fails
    # ("error setting rlimits"). The containers get this shell's open-file limit (at most
    # the unit's 262144) and 4096 processes (tried: up to 32768 passes there, 50000 not).
    local nofile
    nofile=$(ulimit -Hn)
    [[ $nofile == unlimited ]] || (( nofile > 262144 )) && nofile=262144
    # shellcheck disable=SC2034 # used by the scripts that source this file
    ULIMITS=(--ulimit "nofile=$nofile:$nofile" --ulimit nproc=4096:4096)
    # shellcheck disable=SC2034 # used by the scripts that source this file
    BUILDAH=(buildah --storage-driver vfs)
    # One run at a time: a second waits (bounded) rather than removing the first's containers.
    exec 9>"$work/lock"
    flock -w 900 9 || fail "another system test holds $work/lock for 15 minutes"
}

# remove_stale PREFIX: containers left by an earlier run that was killed (SIGKILL, a
# reboot) before its trap ran. Names carry the pid of their run, so a rerun never
# collides with them, but they would pile up.
remove_stale() {
    local ids
    ids=$("${PODMAN[@]}" ps -a -q --filter "name=^$1" 2>/dev/null || true)
    if [[ -n $ids ]]; then
        say "removing containers of an earlier run: $(tr '\n' ' ' <<<"$ids")"
        # shellcheck disable=SC2086 # one id per word
        "${PODMAN[@]}" rm -f -t 0 $ids >/dev/null 2>&1 || true
    fi
}

# rootfs_image NAME PACKAGES: sets IMAGE to localhost/gatehouse-systest-NAME:KEY, imported
# into the private storage from a Debian bookworm minbase rootfs with PACKAGES
# (comma-separated, may be empty). mmdebstrap makes the rootfs once: the tarball is
# cached under target/system/ and the image kept, both by KEY (a hash of the options),
# so a second run costs neither. Like the real bookworm-slim image, it leaves out
# documentation, man pages and locales.
rootfs_image() {
    local name=$1 include=$2
    local opts=(--variant=minbase --format=tar
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*')
    [[ -n $include ]] && opts+=("--include=$include")
    local key tar
    key=$(printf '%s\n' "${opts[@]}" | sha256sum | cut -c1-12)
    IMAGE=localhost/gatehouse-systest-$name:$key
    # Those of an earlier package list go.
    local old
    for old in "$work"/rootfs-"$name"-*.tar; do
        [[ -e $old && $old != "$work/rootfs-$name-$key.tar" ]] && rm -f "$old"
    done
    for old in $("${PODMAN[@]}" images --format '{{.Repository}}:{{.Tag}}' "localhost/gatehouse-systest-$name" 2>/dev/null); do
        [[ $old != "$IMAGE" ]] && "${PODMAN[@]}" rmi -f "$old" >/dev/null 2>&1
    done
    if "${PODMAN[@]}" image exists "$IMAGE"; then
        say "image $IMAGE: cached"
        return
    fi
    tar=$work/rootfs-$name-$key.tar
    if [[ ! -s $tar ]]; then
        say "mmdebstrap bookworm ($name${include:+: $include}) -> $tar"
        local t0=$SECONDS
        # A name of this run's own (removed by cleanup_parts if interrupted).
        mmdebstrap --quiet "${opts[@]}" bookworm "$tar.part.$$" </dev/null ||
            { rm -f "$tar.part.$$"; fail "mmdebstrap failed (it needs Debian's package mirror)"; }
        mv "$tar.part.$$" "$tar"
        say "  made in $((SECONDS - t0))s, $(du -m "$tar" | cut -f1) MB"
    else
        say "rootfs $tar: cached"
    fi
    "${PODMAN[@]}" import --quiet "$tar" "$IMAGE" >/dev/null || fail "podman import $tar failed"
    say "image $IMAGE: imported"
}

# cleanup_parts: what an interrupted rootfs_image of this run left.
cleanup_parts() {
    rm -f "$work"/rootfs-*.tar.part."$$"
}

# start_echo NET: echo servers on 127.0.NET.11-13:28080 for gatehouse to forward to, on
# the host's loopback (which the containers share: --network host). Sets ECHO_PID.
start_echo() {
    local net=$1
    coproc ECHO { exec python3 "$systest_dir/drive.py" echo "127.0.$net.11:28080" "127.0.$net.12:28080" \
        "127.0.$net.13:28080" --lifetime 1800; }
    local line=
    read -r -t 10 line <&"${ECHO[0]}" || true
    [[ $line == ready ]] || fail "echo servers did not start (said: '$line')"
}
