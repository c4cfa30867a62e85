#!/usr/bin/env bash
# Check the systemd units in deploy/ the way systemd itself would read them.
#
#   bash deploy/verify-unit.sh [BINARY]     (BINARY defaults to target/release/gatehouse)
#
# 1. `systemd-analyze verify` on gatehouse.service and gatehouse.socket. The units
#    name /usr/bin/gatehouse, which does not exist on a build machine, so they
#    are checked from a temp copy that points at BINARY instead. verify exits 0 on
#    parse warnings (unknown key, bad value), so any line it prints about our
#    units also counts as a failure.
# 2. `systemd-analyze security --offline=true`: the overall exposure must stay at or
#    below MAX_EXPOSURE (default 2.0, "OK"), so a hardening line lost in an edit
#    fails CI instead of going unnoticed.
# 3. The sysusers.d entry is applied to an empty temp root.
#
# Needs no running systemd (works in a container or CI as plain root), only the
# systemd package's tools; on Debian it installs them when missing and run as root.
set -euo pipefail

MAX_EXPOSURE=${MAX_EXPOSURE:-2.0}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=$(readlink -f -- "${1:-target/release/gatehouse}" || true)

fail() { echo "verify-unit: FAIL: $*" >&2; exit 1; }

[[ -n $bin && -f $bin && -x $bin ]] ||
    fail "no executable at '${1:-target/release/gatehouse}' (build it first, or pass a path)"
# The path is pasted into ExecStart=, where whitespace would split it.
[[ $bin != *[[:space:]]* ]] || fail "binary path contains whitespace: '$bin'"

if ! command -v systemd-analyze >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "verify-unit: installing systemd for systemd-analyze"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
    else
        fail "systemd-analyze not found (install the systemd package)"
    fi
fi
# --offline for `security` arrived in systemd 250.
sd_version=$(systemd-analyze --version | awk 'NR==1 {print $2}')
(( ${sd_version%%[!0-9]*} >= 250 )) || fail "systemd $sd_version is too old; need 250 or newer"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Escape what sed would treat specially in a replacement.
bin_sed=$(printf '%s' "$bin" | sed 's/[\\|&]/\\&/g')
for unit in gatehouse.service gatehouse.socket; do
    sed "s|/usr/bin/gatehouse|$bin_sed|g" "$here/$unit" > "$tmp/$unit"
done

status=0

echo "== systemd-analyze verify (ExecStart -> $bin)"
# --man=no: Documentation= man pages need not be installed here.
# --generators=no: generators would inspect this machine's fstab etc., which is noise.
set +e
out=$(cd "$tmp" && systemd-analyze verify --man=no --generators=no \
    "$tmp/gatehouse.service" "$tmp/gatehouse.socket" 2>&1)
rc=$?
set -e
[[ -n $out ]] && printf '%s\n' "$out"
if (( rc != 0 )); then
    echo "verify-unit: systemd-analyze verify exited $rc" >&2; status=1
elif grep -qE 'gatehouse\.(service|socket)' <<<"$out"; then
    echo "verify-unit: systemd-analyze verify reported problems in our units" >&2; status=1
else
    echo "ok: units parse cleanly"
fi

echo "== systemd-analyze security --offline=true"
set +e
sec=$(systemd-analyze security --offline=true --no-pager "$tmp/gatehouse.service" 2>&1)
rc=$?
set -e
exposure_line=$(grep -E 'Overall exposure level for gatehouse\.service' <<<"$sec" || true)
exposure=$(sed -nE 's/.*: ([0-9]+(\.[0-9]+)?) .*/\1/p' <<<"$exposure_line")
if [[ -z $exposure ]]; then
    printf '%s\n' "$sec"
    echo "verify-unit: could not read the exposure level (exit $rc)" >&2; status=1
else
    # Show only what still counts against the unit, not the ~80 passing checks.
    grep -E '^✗' <<<"$sec" || true
    echo "$exposure_line"
    if awk -v e="$exposure" -v max="$MAX_EXPOSURE" 'BEGIN { exit !(e > max) }'; then
        echo "verify-unit: exposure $exposure is above $MAX_EXPOSURE" >&2; status=1
    else
        echo "ok: exposure $exposure <= $MAX_EXPOSURE"
    fi
fi

echo "== systemd-sysusers (empty root)"
if [[ -f $here/gatehouse.sysusers ]]; then
    mkdir -p "$tmp/root/etc"
    if systemd-sysusers --root="$tmp/root" - < "$here/gatehouse.sysusers" >/dev/null 2>"$tmp/sysusers.err" &&
        grep -q '^gatehouse:' "$tmp/root/etc/passwd" && grep -q '^gatehouse:' "$tmp/root/etc/group"; then
        echo "ok: creates user and group gatehouse"
    else
        cat "$tmp/sysusers.err" >&2
        echo "verify-unit: gatehouse.sysusers did not create user and group gatehouse" >&2; status=1
    fi
fi

if (( status == 0 )); then echo "verify-unit: all checks passed"; fi
exit "$status"
