#!/usr/bin/env bash
# Build what ships: a portable gatehouse binary and the RPM around it.
#
#   bash deploy/dist.sh              (from anywhere in the repository)
#
# Produces, under target/dist/:
#   gatehouse                        x86_64 Linux, needs glibc >= 2.28 (EL8, EL9,
#                                    Debian 11+, Ubuntu 20.04+)
#   gatehouse.pp.bz2                 the SELinux policy module, compiled
#   gatehouse-VERSION-1.x86_64.rpm   binary, units, sysusers entry, config,
#                                    SELinux module (compiled and sources), docs
# deploy/check-dist.sh checks both; CI runs the two in turn.
#
# The binary is a release build linked against glibc 2.28's symbol versions by
# cargo-zigbuild (Zig as the C compiler and linker, with its own glibc stubs),
# so the build machine's glibc does not matter. Both tools come from PyPI
# (ziglang, cargo-zigbuild: prebuilt wheels, no compiling), pinned below and
# installed into target/dist-tools (a virtualenv) on first use. The RPM is made
# by plain rpmbuild (Debian package `rpm`) from deploy/gatehouse.spec.
#
# `cargo build --release` keeps working as before for running gatehouse on the
# build machine itself; it writes target/release, this writes
# target/x86_64-unknown-linux-gnu/release.
set -euo pipefail

ZIGLANG_VERSION=${ZIGLANG_VERSION:-0.17.1}
CARGO_ZIGBUILD_VERSION=${CARGO_ZIGBUILD_VERSION:-0.24.1}
GLIBC_TARGET=2.28
TRIPLE=x86_64-unknown-linux-gnu

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=target/dist

fail() { echo "dist: FAIL: $*" >&2; exit 1; }
say() { printf '==> %s\n' "$*"; }

[[ $(uname -m) == x86_64 ]] || fail "builds the x86_64 package only (this is $(uname -m))"

# --- tools -------------------------------------------------------------------
# A private virtualenv under target/ with pinned versions: nothing is installed
# system-wide, and Debian's own python3 (which refuses `pip install` outside a
# venv) works as well as any other. Made once, reused while the pins match.
tools=$root/target/dist-tools
pins="ziglang==$ZIGLANG_VERSION cargo-zigbuild==$CARGO_ZIGBUILD_VERSION"
if [[ ! -x $tools/bin/cargo-zigbuild || $(cat "$tools/pins" 2>/dev/null) != "$pins" ]]; then
    say "installing $pins from PyPI into $tools"
    rm -rf "$tools"
    python3 -m venv "$tools" || fail "python3 -m venv failed (Debian: apt-get install python3-venv)"
    # shellcheck disable=SC2086 # $pins is two words on purpose
    "$tools/bin/python3" -m pip install --quiet --disable-pip-version-check $pins ||
        fail "pip install $pins failed"
    echo "$pins" > "$tools/pins"
fi
# cargo-zigbuild runs `python3 -m ziglang` when no `zig` is on PATH: the venv's.
PATH=$tools/bin:$PATH
command -v rpmbuild >/dev/null || fail "rpmbuild not found (Debian: apt-get install rpm)"

# --- binary ------------------------------------------------------------------
say "portable release build (glibc $GLIBC_TARGET): cargo zigbuild --release --target $TRIPLE.$GLIBC_TARGET"
cargo zigbuild --release --locked --target "$TRIPLE.$GLIBC_TARGET"
bin=target/$TRIPLE/release/gatehouse
[[ -x $bin ]] || fail "no binary at $bin"
mkdir -p "$out"
install -m 0755 "$bin" "$out/gatehouse"

# --- SELinux module ------------------------------------------------------------
# Compiled here, shipped ready to load: the RPM's %post installs it where SELinux is
# on. Built with the reference policy's devel headers (Debian: selinux-policy-dev),
# which check-dist.sh then links into a complete policy store.
say "SELinux module gatehouse.pp"
devel=/usr/share/selinux/devel/Makefile
[[ -f $devel ]] && command -v checkmodule >/dev/null && command -v semodule_package >/dev/null ||
    fail "no $devel, checkmodule or semodule_package (Debian: apt-get install selinux-policy-dev checkpolicy semodule-utils)"
se=$root/$out/selinux
rm -rf "$se"
mkdir -p "$se"
cp deploy/selinux/gatehouse.te deploy/selinux/gatehouse.fc deploy/selinux/gatehouse.if "$se/"
(cd "$se" && make -f "$devel" gatehouse.pp > build.log 2>&1) || { cat "$se/build.log" >&2; fail "the SELinux module does not compile"; }
bzip2 -9 -c "$se/gatehouse.pp" > "$out/gatehouse.pp.bz2"

# --- RPM ---------------------------------------------------------------------
version=$(sed -n '/^\[package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)
[[ -n $version ]] || fail "no version in Cargo.toml [package]"
say "rpmbuild gatehouse-$version-1.x86_64.rpm"
topdir=$root/target/dist/rpmbuild
rm -rf "$topdir"
mkdir -p "$topdir"
rpmbuild -bb --quiet --target x86_64 \
    --define "_topdir $topdir" \
    --define "_sourcedir $root" \
    --define "_rpmdir $topdir/RPMS" \
    --define "gh_version $version" \
    --define "gh_binary $root/$out/gatehouse" \
    --define "gh_selinux_pp $root/$out/gatehouse.pp.bz2" \
    deploy/gatehouse.spec
rpm_file=$topdir/RPMS/x86_64/gatehouse-$version-1.x86_64.rpm
[[ -f $rpm_file ]] || fail "rpmbuild made no $rpm_file"
rm -f "$out"/gatehouse-*.rpm
mv "$rpm_file" "$out/"
rm -rf "$topdir"

say "built:"
ls -l "$out/gatehouse" "$out/gatehouse.pp.bz2" "$out/gatehouse-$version-1.x86_64.rpm"
