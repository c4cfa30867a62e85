#!/usr/bin/env bash
# Check what deploy/dist.sh built, the way EL8 would meet it. Fails loudly.
#
#   bash deploy/check-dist.sh [DIST_DIR]        (default target/dist)
#
# 1. The binary: x86_64 ELF whose newest referenced glibc symbol version is at
#    most GLIBC_2.28 (objdump -T and readelf -V must agree), only libraries EL8
#    has, and it runs: --version, and `check` on every config in config/.
# 2. The RPM (rpm tool only, nothing installed on this machine):
#    - name gatehouse-VERSION-1.x86_64.rpm, xz payload;
#    - the exact file list, with mode, owner, group and flags of each entry;
#    - /etc/gatehouse/gatehouse.toml is %config(noreplace);
#    - `rpm -qp --requires` asks for nothing EL8 lacks: glibc symbol versions
#      <= 2.28, rpmlib features of rpm 4.14, systemd, /bin/sh;
#    - %pre/%post enable and start nothing; %pre, run against a scratch root,
#      creates the user;
#    - `rpm --root SCRATCH -i --nodeps` lays the files where the unit expects
#      them (ExecStart binary, its --config file, sysusers entry), with the
#      owners from the header (`rpm -V` clean), and the installed binary runs.
# 3. The SELinux module (deploy/selinux) compiles with the policy devel
#    Makefile (checkmodule + semodule_package), the RPM carries the same
#    sources, and, linked with Debian's reference policy base, gatehouse_t has
#    the rules it needs and no more (sesearch: no file creation, no program
#    execution, TCP binds on http_port_t and gatehouse_port_t only); the compiled
#    module the RPM ships installs into a copy of a complete policy store
#    (selinux-policy-default) with `semodule -n -s default -i`.
# ok() cannot fail, so `test && ok ... || fail ...` is a plain if-then-else here.
# shellcheck disable=SC2015
set -euo pipefail

MAX_GLIBC=2.28
# libgcc_s of GCC 8 (EL8) defines up to GCC_7.0.0.
MAX_GCC=7.0.0

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
dist=${1:-target/dist}
bin=$dist/gatehouse

status=0
fail() { echo "check-dist: FAIL: $*" >&2; status=1; }
die() { echo "check-dist: FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
section() { printf '\n== %s\n' "$*"; }
# version_le A B: A <= B in version order.
version_le() { [[ $(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1) == "$1" ]]; }

for tool in objdump readelf rpm systemd-sysusers; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian: binutils, rpm, systemd)"
done
[[ -x $bin ]] || die "no binary at $bin (run deploy/dist.sh first)"
version=$(sed -n '/^\[package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)
rpm_file=$dist/gatehouse-$version-1.x86_64.rpm
[[ -f $rpm_file ]] || die "no $rpm_file (run deploy/dist.sh first)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- 1. binary ------------------------------------------------------------------
section "binary $bin"
# max_version PREFIX FILE: newest PREFIX<version> among FILE's lines.
max_version() { { grep -oE "\\b$1[0-9]+(\\.[0-9]+)*\\b" "$2" || true; } | sed "s/^$1//" | sort -Vu | tail -1; }

[[ $(readelf -h "$bin") == *"Machine:"*"X86-64"* ]] || fail "$bin is not an x86_64 ELF"
objdump -T "$bin" > "$tmp/dynsym" || die "objdump -T failed"
readelf -V --wide "$bin" > "$tmp/verneed" || die "readelf -V failed"
glibc_objdump=$(max_version GLIBC_ "$tmp/dynsym")
grep -E 'Name: GLIBC_' "$tmp/verneed" > "$tmp/verneed.glibc" || true
glibc_readelf=$(max_version GLIBC_ "$tmp/verneed.glibc")
echo "newest glibc symbol version: objdump -T says GLIBC_$glibc_objdump, readelf -V says GLIBC_$glibc_readelf"
[[ -n $glibc_objdump && $glibc_objdump == "$glibc_readelf" ]] ||
    fail "objdump -T and readelf -V disagree on the glibc requirement"
if [[ -n $glibc_objdump ]] && version_le "$glibc_objdump" "$MAX_GLIBC"; then
    ok "needs glibc $glibc_objdump <= $MAX_GLIBC"
else
    fail "needs GLIBC_$glibc_objdump, newer than $MAX_GLIBC; the symbols that need more:"
    for v in $({ grep -oE 'GLIBC_[0-9.]+' "$tmp/dynsym" || true; } | sed 's/GLIBC_//' | sort -Vu); do
        version_le "$v" "$MAX_GLIBC" || grep -F "(GLIBC_$v) " "$tmp/dynsym" | awk '{print "  " $NF " (GLIBC_'"$v"')"}' >&2
    done
fi
gcc_max=$(max_version GCC_ "$tmp/dynsym")
if [[ -z $gcc_max ]] || version_le "$gcc_max" "$MAX_GCC"; then
    ok "libgcc_s symbol versions: ${gcc_max:+GCC_}${gcc_max:-none} <= GCC_$MAX_GCC"
else
    fail "needs GCC_$gcc_max from libgcc_s, newer than EL8's GCC_$MAX_GCC"
fi
needed=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort | tr '\n' ' ')
echo "shared libraries: $needed"
for lib in $needed; do
    case $lib in
        libc.so.6 | libm.so.6 | libgcc_s.so.1 | libpthread.so.0 | libdl.so.2 | librt.so.1 | ld-linux-x86-64.so.2) ;;
        *) fail "links $lib, which is not part of glibc/libgcc on EL8" ;;
    esac
done
interp=$(readelf -l "$bin" | sed -n 's/.*\[Requesting program interpreter: \(.*\)\]/\1/p')
[[ $interp == /lib64/ld-linux-x86-64.so.2 ]] && ok "interpreter $interp" || fail "interpreter '$interp'"

if out=$("$bin" --version 2>&1); then ok "--version: $out"; else fail "--version failed: $out"; fi
for config in config/*.toml; do
    if out=$("$bin" check --config "$config" 2>&1); then
        ok "check --config $config"
    else
        printf '%s\n' "$out" >&2; fail "check --config $config"
    fi
done

# --- 2. RPM ---------------------------------------------------------------------
section "rpm $rpm_file"
name=$(rpm -qp --qf '%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}' "$rpm_file" 2>/dev/null)
[[ $name == "gatehouse-$version-1.x86_64" ]] && ok "package $name" || fail "package is '$name'"
compressor=$(rpm -qp --qf '%{PAYLOADCOMPRESSOR}' "$rpm_file" 2>/dev/null)
[[ $compressor == xz ]] && ok "payload $compressor" || fail "payload '$compressor' (want xz, readable by EL8's rpm)"

# Every file with mode, owner, group and flags (c=config, n=noreplace, d=doc).
rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILEFLAGS:fflags} %{FILENAMES}\n]' \
    "$rpm_file" 2>/dev/null | sed 's/  */ /g' > "$tmp/files"
doc=/usr/share/doc/gatehouse
share=/usr/share/gatehouse
cat > "$tmp/want" <<WANT
-rwxr-xr-x root root  /usr/bin/gatehouse
-rw-r--r-- root root  /usr/lib/systemd/system/gatehouse.service
-rw-r--r-- root root  /usr/lib/systemd/system/gatehouse.socket
-rw-r--r-- root root  /usr/lib/sysusers.d/gatehouse.conf
drwxr-x--- root gatehouse  /etc/gatehouse
-rw-r----- root gatehouse cn /etc/gatehouse/gatehouse.toml
drwxr-xr-x root root  $share
drwxr-xr-x root root  $share/selinux
-rw-r--r-- root root  $share/selinux/gatehouse.fc
-rw-r--r-- root root  $share/selinux/gatehouse.if
-rw-r--r-- root root  $share/selinux/gatehouse.te
-rw-r--r-- root root  /usr/share/selinux/packages/gatehouse.pp.bz2
drwxr-xr-x root root  $doc
-rw-r--r-- root root d $doc/README.md
-rw-r--r-- root root d $doc/config.md
-rw-r--r-- root root d $doc/deploy-gallade.md
drwxr-xr-x root root  $doc/examples
-rw-r--r-- root root d $doc/examples/alerts.yaml
-rw-r--r-- root root d $doc/examples/container.toml
-rw-r--r-- root root d $doc/examples/gallade.toml
-rw-r--r-- root root d $doc/examples/gatehouse.container
-rw-r--r-- root root d $doc/examples/grafana-dashboard.json
-rw-r--r-- root root d $doc/examples/local.toml
WANT
sed -i 's/  */ /g' "$tmp/want"
if diff <(sort -k5 "$tmp/want") <(sort -k5 "$tmp/files") > "$tmp/files.diff"; then
    ok "file list, modes, owners and flags ($(wc -l < "$tmp/files") entries)"
else
    echo "--- expected / +++ in the rpm:" >&2; cat "$tmp/files.diff" >&2
    fail "file list differs"
fi
configs=$(rpm -qpc "$rpm_file" 2>/dev/null | tr '\n' ' ')
[[ $configs == "/etc/gatehouse/gatehouse.toml " ]] && ok "config files: $configs" || fail "config files: '$configs'"
grep -q ' cn /etc/gatehouse/gatehouse.toml$' "$tmp/files" && ok "gatehouse.toml is %config(noreplace)" ||
    fail "gatehouse.toml is not %config(noreplace)"

# Requirements: each must be something EL8 (rpm 4.14, glibc 2.28, systemd 239) has.
rpmlib_el8=" BuiltinLuaScripts CompressedFileNames ConcurrentAccess ExplicitPackageProvide FileCaps FileDigests HeaderLoadSortsTags LargeFiles PartialHardlinkSets PayloadFilesHavePrefix PayloadIsBzip2 PayloadIsLzma PayloadIsXz PayloadIsZstd RichDependencies ScriptletExpansion ScriptletInterpreterArgs TildeInVersions VersionedDependencies "
rpm -qp --requires "$rpm_file" 2>/dev/null > "$tmp/requires"
req_bad=0
while read -r req; do
    case $req in
        rpmlib\(*)
            feature=${req#rpmlib(}; feature=${feature%%)*}
            [[ $rpmlib_el8 == *" $feature "* ]] || { fail "requires $req: not in EL8's rpm 4.14"; req_bad=1; } ;;
        libc.so.6\(GLIBC_*\)\(64bit\) | libm.so.6\(GLIBC_*\)\(64bit\) | libpthread.so.0\(GLIBC_*\)\(64bit\) | \
        libdl.so.2\(GLIBC_*\)\(64bit\) | librt.so.1\(GLIBC_*\)\(64bit\) | ld-linux-x86-64.so.2\(GLIBC_*\)\(64bit\))
            v=${req#*(GLIBC_}; v=${v%%)*}
            version_le "$v" "$MAX_GLIBC" || { fail "requires $req: newer than glibc $MAX_GLIBC"; req_bad=1; } ;;
        libgcc_s.so.1\(GCC_*\)\(64bit\))
            v=${req#*(GCC_}; v=${v%%)*}
            version_le "$v" "$MAX_GCC" || { fail "requires $req: newer than EL8's libgcc"; req_bad=1; } ;;
        libc.so.6\(\)\(64bit\) | libm.so.6\(\)\(64bit\) | libpthread.so.0\(\)\(64bit\) | libdl.so.2\(\)\(64bit\) | \
        librt.so.1\(\)\(64bit\) | libgcc_s.so.1\(\)\(64bit\) | ld-linux-x86-64.so.2\(\)\(64bit\) | \
        rtld\(GNU_HASH\) | systemd | /bin/sh) ;;
        # rpmbuild's own entry for a %config file, met by the package itself.
        "config(gatehouse) = $version-1") ;;
        *) fail "requires '$req': not known to be in EL8"; req_bad=1 ;;
    esac
done < "$tmp/requires"
glibc_req=$(max_version GLIBC_ "$tmp/requires")
(( req_bad == 0 )) && ok "$(wc -l < "$tmp/requires") requirements, all in EL8 (newest glibc: GLIBC_$glibc_req)"

# Installing neither enables nor starts anything; only removal stops, only an
# upgrade restarts what already runs.
rpm -qp --qf '%{POSTIN}\n%{PREIN}' "$rpm_file" 2>/dev/null > "$tmp/install-scripts"
if grep -qE 'systemctl.*(enable|start|preset)|systemctl +(--[a-z-]+ +)*restart' "$tmp/install-scripts"; then
    fail "%pre/%post enable, start or preset a unit:"; cat "$tmp/install-scripts" >&2
else
    ok "%pre/%post neither enable nor start the units"
fi

# Scratch root: run %pre as rpm would (its systemd-sysusers pointed at the
# scratch root), then install without scriptlets (the scratch root has no shell).
scratch=$tmp/root
mkdir -p "$scratch/etc" "$tmp/shim"
printf '#!/bin/sh\nexec %s --root=%s "$@"\n' "$(command -v systemd-sysusers)" "$scratch" > "$tmp/shim/systemd-sysusers"
chmod +x "$tmp/shim/systemd-sysusers"
rpm -qp --qf '%{PREIN}' "$rpm_file" 2>/dev/null > "$tmp/pre.sh"
grep -q 'systemd-sysusers' "$tmp/pre.sh" || fail "%pre does not run systemd-sysusers"
if PATH=$tmp/shim:$PATH sh -e "$tmp/pre.sh" 2> "$tmp/pre.err" &&
    grep -q '^gatehouse:' "$scratch/etc/passwd" && grep -q '^gatehouse:' "$scratch/etc/group"; then
    ok "%pre creates user and group gatehouse: $(grep '^gatehouse:' "$scratch/etc/passwd")"
else
    cat "$tmp/pre.err" >&2; fail "%pre did not create user and group gatehouse"
fi
if rpm --root "$scratch" --initdb && rpm --root "$scratch" -i --nodeps --noscripts "$rpm_file" 2> "$tmp/install.err"; then
    # Debian's rpm adds a note that native packages belong to dpkg; anything else counts.
    warnings=$(grep -vE '^rpm: (RPM should not be used directly install RPM packages, use Alien instead!|However assuming you know what you are doing...)$' \
        "$tmp/install.err" || true)
    if [[ -n $warnings ]]; then
        cat "$tmp/install.err" >&2; fail "rpm -i printed warnings"
    else
        ok "rpm --root SCRATCH -i --nodeps: installed $(rpm --root "$scratch" -q gatehouse)"
    fi
else
    cat "$tmp/install.err" >&2; fail "rpm --root SCRATCH -i --nodeps failed"
fi
# Modes, owners, digests of what landed, against the header.
if out=$(rpm --root "$scratch" -V --nodeps gatehouse 2>&1) && [[ -z $out ]]; then
    ok "rpm -V: installed files match the package (modes, owners, digests)"
else
    printf '%s\n' "$out" >&2; fail "rpm -V reports differences"
fi
unit=$scratch/usr/lib/systemd/system/gatehouse.service
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
exec_bin=${exec_start%% *}
exec_config=$(sed -n 's/.*--config \([^ ]*\).*/\1/p' <<<"$exec_start")
[[ -x $scratch$exec_bin ]] && ok "ExecStart binary $exec_bin is installed" || fail "ExecStart names $exec_bin, not in the package"
while read -r line; do
    cmd=${line#ExecReload=}; cmd=${cmd%% *}
    [[ -x $scratch$cmd || $cmd == /bin/kill ]] || fail "ExecReload names $cmd, not in the package"
done < <(grep '^ExecReload=' "$unit")
gid=$(awk -F: '$1 == "gatehouse" {print $3}' "$scratch/etc/group")
if [[ -n $exec_config && -f $scratch$exec_config ]] &&
    [[ $(stat -c '%a %u %g' "$scratch$exec_config") == "640 0 $gid" ]] &&
    [[ $(stat -c '%a %u %g' "$(dirname "$scratch$exec_config")") == "750 0 $gid" ]]; then
    ok "--config $exec_config is installed, root:gatehouse 0640 in a 0750 directory"
else
    fail "the unit's --config '$exec_config' is missing or not root:gatehouse 0640 in a 0750 directory"
fi
[[ $(sed -n 's/^User=//p' "$unit") == gatehouse ]] && grep -q '^u gatehouse ' "$scratch/usr/lib/sysusers.d/gatehouse.conf" &&
    ok "unit's User=gatehouse is the sysusers entry's user" || fail "unit's User= and the sysusers entry disagree"
if out=$("$scratch$exec_bin" --version 2>&1) && cmp -s "$scratch$exec_bin" "$bin"; then
    ok "installed binary is the checked one and runs: $out"
else
    fail "installed binary differs from $bin or does not run: $out"
fi
if out=$("$scratch$exec_bin" check --config "$scratch$exec_config" 2>&1); then
    ok "installed binary checks the installed config"
else
    printf '%s\n' "$out" >&2; fail "check of the installed config failed"
fi

# rpm treats it as config in practice: a local edit survives reinstalling the
# package (a plain file would be overwritten; `n` above is what keeps an edit
# also when a newer package changes the default).
echo '# local edit, must survive reinstall' >> "$scratch$exec_config"
if rpm --root "$scratch" -U --replacepkgs --nodeps --noscripts "$rpm_file" 2> "$tmp/reinstall.err" &&
    grep -q '^# local edit, must survive reinstall$' "$scratch$exec_config"; then
    ok "an edited gatehouse.toml survives reinstalling the package"
else
    cat "$tmp/reinstall.err" >&2; fail "reinstalling the package replaced the edited gatehouse.toml"
fi

# --- 3. SELinux ---------------------------------------------------------------
section "SELinux module deploy/selinux"
for f in gatehouse.te gatehouse.fc gatehouse.if; do
    cmp -s "deploy/selinux/$f" "$scratch/usr/share/gatehouse/selinux/$f" || fail "the rpm's $f differs from deploy/selinux/$f"
done
# Labels and unit must name the same paths.
grep -qE "^${exec_bin//\//\\/}[[:space:]].*gatehouse_exec_t" deploy/selinux/gatehouse.fc &&
    grep -qE "^$(dirname "$exec_config")\(" deploy/selinux/gatehouse.fc &&
    ok "gatehouse.fc labels $exec_bin and $(dirname "$exec_config")" ||
    fail "gatehouse.fc does not label $exec_bin and $(dirname "$exec_config")"
devel=/usr/share/selinux/devel/Makefile
if [[ -f $devel ]] && command -v checkmodule >/dev/null && command -v semodule_package >/dev/null; then
    mkdir "$tmp/se" && cp deploy/selinux/gatehouse.{te,fc,if} "$tmp/se/"
    if (cd "$tmp/se" && make -f "$devel" gatehouse.pp) > "$tmp/se.log" 2>&1 && [[ -s $tmp/se/gatehouse.pp ]]; then
        if grep -iE 'warning|error' "$tmp/se.log" >&2; then
            fail "policy build printed warnings"
        else
            ok "gatehouse.pp builds ($(stat -c %s "$tmp/se/gatehouse.pp") bytes) with $devel"
        fi
    else
        cat "$tmp/se.log" >&2; fail "the policy module does not compile"
    fi
    # The ifdef() fallbacks are what the Fedora/EL policy takes: compile them too,
    # by making every ifdef'd interface look undefined.
    mkdir "$tmp/se-fallback" && cp deploy/selinux/gatehouse.{fc,if} "$tmp/se-fallback/"
    # shellcheck disable=SC2016 # the backquote is m4 quoting, not a shell expansion
    sed 's/ifdef(`/ifdef(`gatehouse_undefined_/' deploy/selinux/gatehouse.te > "$tmp/se-fallback/gatehouse.te"
    if (cd "$tmp/se-fallback" && make -f "$devel" gatehouse.pp) > "$tmp/se-fallback.log" 2>&1; then
        ok "the ifdef() fallback branches compile ($(grep -c 'ifdef(`' deploy/selinux/gatehouse.te) of them)"
    else
        cat "$tmp/se-fallback.log" >&2; fail "the ifdef() fallback branches do not compile"
    fi
else
    fail "no $devel, checkmodule or semodule_package (Debian: selinux-policy-dev checkpolicy semodule-utils)"
fi

# The module the RPM ships, as its %post loads it: into a copy of a complete policy
# store (Debian's reference policy, package selinux-policy-default), with -n so that
# nothing is reloaded: the running system is not touched.
section "the rpm's SELinux module installs into a complete policy store"
pp=$scratch/usr/share/selinux/packages/gatehouse.pp.bz2
if [[ ! -s $pp ]]; then
    fail "the rpm carries no /usr/share/selinux/packages/gatehouse.pp.bz2"
elif [[ ! -d /var/lib/selinux/default ]] || ! command -v semodule >/dev/null; then
    fail "no policy store /var/lib/selinux/default or no semodule (Debian: apt-get install selinux-policy-default)"
else
    store=$tmp/store
    mkdir -p "$store/var/lib/selinux" "$store/etc/selinux"
    cp -a /var/lib/selinux/default "$store/var/lib/selinux/"
    cp -a /etc/selinux/. "$store/etc/selinux/"
    if semodule -p "$store" -s default -n -X 200 -i "$pp" > "$tmp/semodule.log" 2>&1 &&
        semodule -p "$store" -s default -l 2>/dev/null | grep -qx gatehouse; then
        ok "semodule -n -s default -X 200 -i gatehouse.pp.bz2: installed into the reference policy's store"
    else
        cat "$tmp/semodule.log" >&2; fail "the rpm's gatehouse.pp.bz2 does not install into a complete policy store"
    fi
fi

# What the domain may do, read off the module linked with Debian's reference
# policy base (selinux-policy-default, unpacked here, not installed): the rules
# gatehouse needs are there, and it can create no file, execute no program,
# and bind TCP only on its own and the HTTP ports.
section "SELinux domain gatehouse_t, linked with the reference policy"
policy_rules() {
    command -v sesearch >/dev/null && command -v semodule_link >/dev/null && command -v semodule_expand >/dev/null ||
        { fail "sesearch, semodule_link or semodule_expand missing (Debian: setools semodule-utils)"; return 1; }
    [[ -s $tmp/se/gatehouse.pp ]] || { fail "no compiled module to link"; return 1; }
    mkdir -p "$tmp/pol"
    local deb
    deb=$(cd "$tmp/pol" && apt-get download selinux-policy-default >/dev/null 2>&1 && ls selinux-policy-default_*.deb) ||
        { fail "could not fetch selinux-policy-default with apt-get download"; return 1; }
    dpkg-deb -x "$tmp/pol/$deb" "$tmp/pol/x" &&
        bunzip2 -c "$tmp/pol/x/usr/share/selinux/default/base.pp.bz2" > "$tmp/pol/base.pp" &&
        semodule_link -o "$tmp/pol/linked.pp" "$tmp/pol/base.pp" "$tmp/se/gatehouse.pp" >/dev/null 2>&1 &&
        semodule_expand "$tmp/pol/linked.pp" "$tmp/pol/policy.bin" ||
        { fail "gatehouse.pp does not link with the reference policy base"; return 1; }
    ok "links with $deb's base module"
}
# expect_rule DESCRIPTION REGEX SESEARCH-ARGS...: some rule matches.
expect_rule() {
    local what=$1 want=$2; shift 2
    local rules
    rules=$(sesearch "$@" "$tmp/pol/policy.bin" 2>/dev/null || true)
    if grep -qE "$want" <<<"$rules"; then ok "$what"; else fail "missing: $what (sesearch $*)"; fi
}
# only_targets DESCRIPTION ALLOWED-REGEX SESEARCH-ARGS...: every rule's target matches.
only_targets() {
    local what=$1 allowed=$2 extra; shift 2
    extra=$(sesearch "$@" "$tmp/pol/policy.bin" 2>/dev/null | awk '{print $3}' | cut -d: -f1 | sort -u | grep -vxE "$allowed" || true)
    if [[ -z $extra ]]; then ok "$what"; else fail "$what: also allowed on $(tr '\n' ' ' <<<"$extra")(sesearch $*)"; fi
}
if policy_rules; then
    expect_rule "systemd starts /usr/bin/gatehouse in gatehouse_t" 'init_t gatehouse_exec_t:process gatehouse_t' -T -s init_t -t gatehouse_exec_t
    expect_rule "... also under NoNewPrivileges=yes" 'nnp_transition' -A -s init_t -t gatehouse_t -c process2
    expect_rule "binds and connects 80/443 (http_port_t)" 'name_bind name_connect' -A -s gatehouse_t -t http_port_t -c tcp_socket
    expect_rule "binds and connects gatehouse_port_t (6443, 8405)" 'name_bind name_connect' -A -s gatehouse_t -t gatehouse_port_t -c tcp_socket
    expect_rule "accepts on sockets passed by gatehouse.socket" 'accept' -A -s gatehouse_t -t init_t -c tcp_socket
    expect_rule "reads /etc/gatehouse" 'read' -A -s gatehouse_t -t gatehouse_conf_t -c file
    expect_rule "reads /etc/hosts and /etc/resolv.conf (net_conf_t)" 'read' -A -s gatehouse_t -t net_conf_t -c file
    expect_rule "connects to DNS servers" 'name_connect' -A -s gatehouse_t -t dns_port_t -c tcp_socket
    expect_rule "sends sd_notify datagrams to systemd" 'sendto' -A -s gatehouse_t -t init_t -c unix_dgram_socket
    expect_rule "logs to journald (/dev/log)" 'write' -A -s gatehouse_t -t devlog_t -c sock_file
    expect_rule "CAP_NET_BIND_SERVICE" 'net_bind_service' -A -s gatehouse_t -c capability
    only_targets "capabilities: net_bind_service only" 'gatehouse_t' -A -s gatehouse_t -c capability
    [[ $(sesearch -A -s gatehouse_t -c capability "$tmp/pol/policy.bin" | grep -oE '\{[^}]*\}|net_bind_service' | tr -d '{}' | xargs) == net_bind_service ]] ||
        fail "capabilities other than net_bind_service: $(sesearch -A -s gatehouse_t -c capability "$tmp/pol/policy.bin")"
    only_targets "binds TCP only on http_port_t and gatehouse_port_t" 'http_port_t|gatehouse_port_t' -A -s gatehouse_t -c tcp_socket -p name_bind
    only_targets "creates no file anywhere" '' -A -s gatehouse_t -c file -p create
    only_targets "adds no name to any directory" '' -A -s gatehouse_t -c dir -p add_name
    only_targets "executes only itself, the loader and libraries" 'gatehouse_exec_t|ld_so_t|lib_t|textrel_shlib_t' -A -s gatehouse_t -c file -p execute
    only_targets "writes no file but its own /proc and inherited tmpfs fds" 'gatehouse_t|init_tmpfs_t' -A -s gatehouse_t -c file -p write
fi

echo
if (( status == 0 )); then echo "check-dist: all checks passed"; else echo "check-dist: FAILED" >&2; fi
exit "$status"
