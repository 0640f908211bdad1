#!/usr/bin/env bash
# Installs a CRIU that works on this machine kind, idempotently: CRIU 4.2.1,
# in its own Debian root, run from the host through a wrapper.
#
#   root:    $PAGEHOP_CRIU_ROOT     (default /opt/pagehop/criu-root)
#   wrapper: $PAGEHOP_CRIU_WRAPPER  (default /opt/pagehop/bin/criu)
#   mirror:  $PAGEHOP_DEBIAN_MIRROR (default: the Debian mirror the host's apt
#            uses, from /etc/apt/sources.list and sources.list.d/)
#   log:     every apt/debootstrap/build line goes to <root>.log
# If the wrapper exists and reports 4.2.x, nothing is done.
#
# Why not the host's package (shared DESIGN.md, "CRIU on this machine kind"):
# bookworm's CRIU 3.17 does not start on kernel 6.18 (vDSO); trixie's 4.1.1
# cannot dump a process holding an inet socket (getsockopt SO_PASSCRED on a
# TCP socket returns EOPNOTSUPP here, 4.1.1 treats it as fatal). 4.2.1 works.
#   1. debootstrap --variant=minbase --include=criu trixie ROOT MIRROR
#      (trixie's criu brings the libraries CRIU needs).
#   2. ROOT gets `deb MIRROR sid main` and Acquire::Check-Valid-Until "false"
#      (sid's Release on the mirror reachable here is past its Valid-Until).
#   3. If sid's criu version starts with 4.2.1: apt-get install -t sid
#      criu=THAT-VERSION, held. Otherwise (sid has moved on) the FALLBACK:
#      deb-src lines for sid, testing, trixie-backports and snapshot.debian.org
#      ($PAGEHOP_CRIU_SNAPSHOT, a timestamp when sid had 4.2.1-1), then
#      `apt-get source criu=4.2.1-N`, build deps from trixie (-t trixie, so
#      sid's are not pulled), `dpkg-buildpackage -B`, the criu .deb installed
#      and held. If the mirror has the .dsc and upstream's orig tarball but
#      not Debian's packaging tarball (the case on this machine's mirror:
#      criu_4.2.1-1.debian.tar.xz answers 404), upstream's 4.2.1 is built
#      from the orig tarball (hash-checked against the .dsc) with the same
#      build deps, `make criu`, and installed as ROOT/usr/local/sbin/criu
#      (without Debian's patches; trixie's criu package stays for its
#      libraries). PAGEHOP_CRIU_FROM_SOURCE=1 forces the fallback.
#   4. The wrapper execs ROOT's dynamic loader with --library-path ROOT's
#      library directories and ROOT's criu "$@". CRIU acts on the host's
#      /proc; the helpers it runs (iptables for --tcp-established, ip, tar)
#      are the host's, found on PATH, with the host's libraries
#      (--library-path is not inherited by children). CRIU loads every *.so
#      in its plugin directory, by default /usr/lib/criu, which would be the
#      host's; the wrapper sets CRIU_LIBS_DIR to ROOT/usr/lib/criu instead
#      (kept empty: Debian's criu ships no plugins; its only helper,
#      /usr/libexec/criu/scripts/systemd-autofs-restart.sh, is an
#      --action-script a caller would name explicitly). CRIU never re-execs
#      itself (no /proc/self/exe), so running it through the loader is safe.
#
# Verified here on 2026-12-02 (kernel 6.18.44, 2 cores), as root, through
# /opt/pagehop/bin/criu (Debian 4.2.1-1 from sid); a first install takes
# about 30 s here (the source fallback about 2.5 minutes):
#   criu --version  -> "Version: 4.2.1"
#   criu check      -> "Looks good." exit 0 (at -v4 it logs "File
#                      /run/criu.kdat does not exist" and "Dirty tracking
#                      support is OFF": /run is no tmpfs, so every run
#                      re-probes the kernel; no soft-dirty. Both harmless.)
#   A sleep in its own pid namespace:
#     unshare -p -f setsid sleep 1000 </dev/null >/dev/null 2>&1 &
#     PID=$(pgrep -P $!)                  # the sleep, pid 1 of its namespace
#     criu dump -t $PID -D DIR --shell-job --leave-stopped      -> exit 0
#     criu restore -D DIR -d --shell-job                        -> exit 0
#   The restored sleep runs (Ss, new pid namespace, parent: host pid 1)
#   beside its source, which stays stopped (Ts). --leave-running instead of
#   --leave-stopped also works (both run).
#   redis-server (bookworm's 7.0.15) holding 20005 keys, one client connected:
#     unshare -p -f setsid redis-server --port 6399 --save '' --appendonly no \
#         </dev/null >/dev/null 2>&1 &
#     criu dump -t $PID -D DIR --shell-job --tcp-close --leave-stopped -> 0
#     criu restore -D DIR -d --shell-job --tcp-close            -> 1 while the
#         stopped source still holds port 6399 ("inet: Can't bind inet socket
#         (id 26): Address already in use"); exit 0 under `ip netns exec NS`
#         (lo up) beside the stopped source, and exit 0 in the host's network
#         namespace once the source is killed. redis-cli -p 6399 dbsize ->
#         20005 and every key read back, in both.
#     Without --tcp-close the dump fails: "inet: Connected TCP socket,
#         consider using --tcp-established option."
#     criu dump -t $PID -D DIR --shell-job --tcp-established (source killed
#         by the dump), then criu restore -D DIR -d --shell-job
#         --tcp-established: both exit 0 and the client's connection lives
#         on (one GET before, one after, on the same socket).
#   Quirks: every dump and restore prints "Error (criu/util.c:1534): rlimit:
#   Can't setup RLIMIT_NOFILE for self: Operation not permitted" and still
#   succeeds (this sandbox's root lacks CAP_SYS_RESOURCE, so CRIU cannot raise
#   its own fd limit above the hard limit 20000); a dump prints "Warn
#   (compel/arch/x86/src/lib/infect.c:419): Will restore PID with interrupted
#   system call". Judge by the exit code, not by "Error" on stderr. A
#   restored tree that is killed stays a zombie for a moment (its parent is
#   the host's pid 1) before it is reaped.
#
# The fallback was run here (PAGEHOP_CRIU_FROM_SOURCE=1, a separate root):
# `apt-get source criu=4.2.1-1` fetched the .dsc and orig tarball from sid's
# deb-src and failed on the debian.tar.xz (404 on this mirror), so the
# upstream-tarball build ran: build deps from trixie, `make criu` (~45 s),
# and the resulting "Version: 4.2.1" passed the same checks (criu check;
# redis dump+restore with keys). NOT tested: the dpkg-buildpackage branch
# (needs a mirror with Debian's packaging tarball), the snapshot.debian.org
# source (not reachable from this machine), and the fallback as it would run
# once sid really has moved past 4.2.1 (then a 4.2.1 source must be in
# testing, trixie-backports or a reachable snapshot).
set -euo pipefail

say() { printf 'setup: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

WANT=4.2.1
ROOT="${PAGEHOP_CRIU_ROOT:-/opt/pagehop/criu-root}"
WRAPPER="${PAGEHOP_CRIU_WRAPPER:-/opt/pagehop/bin/criu}"
BASE_SUITE="${PAGEHOP_CRIU_BASE_SUITE:-trixie}"
FROM_SOURCE="${PAGEHOP_CRIU_FROM_SOURCE:-0}"
# A snapshot.debian.org timestamp at which sid had criu 4.2.1-1 (uploaded
# 2026-07-30, still sid's on 2026-12-02). Fallback only; empty disables it.
SNAPSHOT="${PAGEHOP_CRIU_SNAPSHOT-20261001T000000Z}"

wrapper_version() { "$WRAPPER" --version 2>/dev/null | sed -n 's/^Version: *//p' | head -n1; }

if [ -x "$WRAPPER" ]; then
    v="$(wrapper_version || true)"
    case "$v" in
        4.2.*) say "CRIU $v already installed ($WRAPPER)"; exit 0 ;;
        "") say "$WRAPPER does not run; reinstalling" ;;
        *) say "$WRAPPER reports CRIU $v, not $WANT; reinstalling" ;;
    esac
fi

[ "$(id -u)" = 0 ] || die "installing CRIU needs root (debootstrap, chroot)"
case "$ROOT" in
    /*/*) ;;
    *) die "PAGEHOP_CRIU_ROOT must be an absolute path below a directory (got '$ROOT')" ;;
esac
ROOT="${ROOT%/}"
LOG="$ROOT.log"
LIBPATH="$ROOT/usr/lib/x86_64-linux-gnu:$ROOT/lib/x86_64-linux-gnu"
SRC_DIR=/usr/src/pagehop-criu      # inside the root
LOCAL_BIN=/usr/local/sbin/criu     # inside the root: the upstream-tarball build

# The Debian mirror the host's apt uses: the first http(s) URI of a source
# ending in /debian (not -security), in apt's reading order.
host_mirror() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        awk '$1 == "deb" {
                 i = 2
                 if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                 print $i
             }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' "$f"
    done
}
MIRROR="${PAGEHOP_DEBIAN_MIRROR:-$(host_mirror | grep -E '^https?://' | grep -v -- '-security' \
    | grep -E '/debian/?$' | head -n1 || true)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
MIRROR="${MIRROR%/}"

mkdir -p "$(dirname "$ROOT")"
: >>"$LOG"
# Runs a command with its output in the log; on failure shows the log's tail.
logged() {
    printf '\n$ %s\n' "$*" >>"$LOG"
    if ! "$@" >>"$LOG" 2>&1; then
        say "failed: $*"
        say "last lines of $LOG:"
        tail -n 25 "$LOG" >&2
        return 1
    fi
}

# The same, quiet on failure (for a step whose failure is handled).
logged_q() {
    printf '\n$ %s\n' "$*" >>"$LOG"
    "$@" >>"$LOG" 2>&1
}

mounted_proc=""
cleanup() {
    if [ -n "$mounted_proc" ]; then umount "$ROOT/proc" 2>/dev/null || umount -l "$ROOT/proc" || true; fi
}
trap cleanup EXIT

in_root() {
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive chroot "$ROOT" "$@"
}
enter_root() {
    if ! mountpoint -q "$ROOT/proc"; then
        mount -t proc proc "$ROOT/proc"
        mounted_proc=1
    fi
    rm -f "$ROOT/etc/resolv.conf"
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
}

# The root's criu binary (the upstream-tarball build wins when present), its
# version as it reports it, and what it is.
root_bin() { if [ -x "$ROOT$LOCAL_BIN" ]; then echo "$ROOT$LOCAL_BIN"; else echo "$ROOT/usr/sbin/criu"; fi; }
root_version() {
    [ -x "$ROOT/lib64/ld-linux-x86-64.so.2" ] && [ -x "$(root_bin)" ] || return 0
    "$ROOT/lib64/ld-linux-x86-64.so.2" --library-path "$LIBPATH" "$(root_bin)" --version 2>/dev/null \
        | sed -n 's/^Version: *//p' | head -n1
}
root_origin() {
    if [ -x "$ROOT$LOCAL_BIN" ]; then
        echo "upstream source from Debian's criu_${WANT} orig tarball"
    else
        echo "Debian package $(in_root dpkg-query -W -f='${Version}' criu 2>/dev/null || echo '?')"
    fi
}

# 1. The root: a minimal trixie with trixie's criu (brings its libraries).
STAMP="$ROOT/.pagehop-root"
if [ ! -f "$STAMP" ]; then
    if ! command -v debootstrap >/dev/null 2>&1; then
        say "installing debootstrap on the host"
        logged apt-get update -qq
        logged env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
    fi
    if [ -e "$ROOT" ]; then
        say "removing the incomplete CRIU root $ROOT"
        findmnt -rn -o TARGET | grep -F "$ROOT/" | sort -r | while read -r m; do umount -l "$m" || true; done
        rm -rf --one-file-system "$ROOT"
    fi
    say "debootstrapping a minimal $BASE_SUITE into $ROOT from $MIRROR (under a minute; log: $LOG)"
    logged debootstrap --variant=minbase --include=criu "$BASE_SUITE" "$ROOT" "$MIRROR"
    printf '%s %s\n' "$BASE_SUITE" "$MIRROR" >"$STAMP"
fi

# 2. APT in the root: sid's binaries beside trixie, Valid-Until not checked.
cat >"$ROOT/etc/apt/apt.conf.d/99pagehop" <<'EOF'
// written by pagehop scripts/setup-criu.sh
// sid's Release file on the reachable mirror is past its Valid-Until date.
Acquire::Check-Valid-Until "false";
APT::Install-Recommends "false";
Acquire::Languages "none";
Dpkg::Use-Pty "false";
EOF
printf '# written by pagehop scripts/setup-criu.sh\ndeb %s sid main\n' "$MIRROR" \
    >"$ROOT/etc/apt/sources.list.d/pagehop-sid.list"

# Upstream's CRIU from the orig tarball next to a .dsc (Debian's packaging
# tarball missing): same build deps, `make criu`, the binary to LOCAL_BIN.
build_from_orig() {
    local dsc="$1" orig sum
    orig="$(sed -n 's/^ [0-9a-f]\{64\} [0-9]* \(criu_[^ ]*\.orig\.tar\.[a-z0-9]*\)$/\1/p' "$ROOT$SRC_DIR/$dsc" | head -n1)"
    sum="$(sed -n "s/^ \([0-9a-f]\{64\}\) [0-9]* ${orig//./\\.}\$/\1/p" "$ROOT$SRC_DIR/$dsc" | head -n1)"
    [ -n "$orig" ] && [ -f "$ROOT$SRC_DIR/$orig" ] || die "Debian's criu source is incomplete on $MIRROR and has no orig tarball either"
    echo "$sum  $ROOT$SRC_DIR/$orig" | sha256sum -c --quiet - || die "$orig does not match $dsc's sha256"
    say "apt-get source criu fetched $dsc but not all of Debian's source (see $LOG): building upstream's $WANT from $orig instead (about 2 minutes)"
    logged in_root apt-get build-dep -y -t "$BASE_SUITE" "$SRC_DIR/$dsc"
    logged in_root sh -c "cd $SRC_DIR && tar xf $orig"
    local dir
    dir="$(cd "$ROOT$SRC_DIR" && ls -d criu-*/ | head -n1)"
    [ -n "$dir" ] || die "$orig unpacked no criu-*/ directory"
    logged in_root sh -c "cd $SRC_DIR/$dir && make -j$(nproc) criu"
    install -D -m 755 "$ROOT$SRC_DIR/${dir}criu/criu" "$ROOT$LOCAL_BIN"
}

# Debian's criu 4.2.1 source package, built inside the root.
build_from_source() {
    {
        echo "# written by pagehop scripts/setup-criu.sh (criu source fallback)"
        echo "deb-src $MIRROR sid main"
        echo "deb-src $MIRROR testing main"
        echo "deb-src $MIRROR $BASE_SUITE-backports main"
    } >"$ROOT/etc/apt/sources.list.d/pagehop-src.list"
    rm -f "$ROOT/etc/apt/sources.list.d/pagehop-snapshot.list"
    if [ -n "$SNAPSHOT" ]; then
        printf '# written by pagehop scripts/setup-criu.sh (criu source fallback)\ndeb-src [check-valid-until=no] http://snapshot.debian.org/archive/debian/%s/ sid main\n' \
            "$SNAPSHOT" >"$ROOT/etc/apt/sources.list.d/pagehop-snapshot.list"
    fi
    # A source that cannot be reached (snapshot, here: "Could not resolve")
    # is a warning, and what the others gave is still read; should apt make
    # it an error, go on all the same.
    logged_q in_root apt-get update || say "some deb-src sources could not be read (see $LOG); looking in the others"
    local src
    src="${PAGEHOP_CRIU_DEB_VERSION:-$(in_root apt-cache showsrc criu 2>/dev/null \
        | sed -n 's/^Version: *//p' | grep "^$WANT-" | sort -V | tail -n1 || true)}"
    [ -n "$src" ] || die "no criu $WANT source package in sid, testing, $BASE_SUITE-backports or snapshot '$SNAPSHOT'; set PAGEHOP_CRIU_SNAPSHOT to a snapshot.debian.org timestamp that has it (and make it reachable), or PAGEHOP_DEBIAN_MIRROR to a mirror that does"
    say "building criu $src from Debian's source package inside $ROOT (several minutes; log: $LOG)"
    logged in_root apt-get install -y -t "$BASE_SUITE" dpkg-dev build-essential fakeroot
    rm -rf "$ROOT$SRC_DIR"
    mkdir -p "$ROOT$SRC_DIR"
    local dsc="criu_${src#*:}.dsc"
    if logged_q in_root sh -c "cd $SRC_DIR && apt-get source --only-source criu=$src"; then
        local dir deb
        dir="$(cd "$ROOT$SRC_DIR" && ls -d criu-*/ | head -n1)"
        [ -n "$dir" ] || die "apt-get source criu=$src unpacked nothing"
        logged in_root apt-get build-dep -y -t "$BASE_SUITE" "$SRC_DIR/$dir"
        logged in_root sh -c "cd $SRC_DIR/$dir && DEB_BUILD_OPTIONS='nocheck parallel=$(nproc)' dpkg-buildpackage -B -uc -us"
        deb="$(cd "$ROOT$SRC_DIR" && ls criu_*_amd64.deb | head -n1)"
        [ -n "$deb" ] || die "the criu build made no criu_*_amd64.deb"
        rm -f "$ROOT$LOCAL_BIN"
        logged in_root apt-get install -y -t "$BASE_SUITE" --allow-downgrades "$SRC_DIR/$deb"
    elif [ -f "$ROOT$SRC_DIR/$dsc" ]; then
        build_from_orig "$dsc"
    else
        die "apt-get source criu=$src failed (see $LOG)"
    fi
    rm -rf "$ROOT$SRC_DIR"
}

have="$(root_version)"
case "$have" in
    "$WANT"*)
        say "the root already has CRIU $have ($(root_origin))" ;;
    *)
        enter_root
        say "reading sid's package lists in the root"
        logged in_root apt-get -o Acquire::Check-Valid-Until=false update
        sid_version="$(in_root apt-cache madison criu \
            | awk -F'|' '$3 ~ / sid\// { gsub(/ /, "", $2); print $2; exit }')"
        if [ "$FROM_SOURCE" != 1 ] && [[ "$sid_version" == "$WANT"* ]]; then
            say "installing criu $sid_version from sid into the root"
            rm -f "$ROOT$LOCAL_BIN"
            logged in_root apt-mark unhold criu
            logged in_root apt-get install -y -t sid "criu=$sid_version"
        else
            if [ "$FROM_SOURCE" = 1 ]; then
                say "PAGEHOP_CRIU_FROM_SOURCE=1: building CRIU $WANT from source (sid has ${sid_version:-none})"
            else
                say "sid's criu is ${sid_version:-missing}, not $WANT: falling back to building $WANT from source"
            fi
            build_from_source
        fi
        logged in_root apt-mark hold criu
        have="$(root_version)"
        [[ "$have" == "$WANT"* ]] || die "the root's criu reports '${have}' after the install, not $WANT"
        ;;
esac

# 3. The wrapper (CRIU_LIBS_DIR: see step 4 above).
mkdir -p "$ROOT/usr/lib/criu" "$(dirname "$WRAPPER")"
tmp="$(mktemp "$WRAPPER.XXXXXX")"
cat >"$tmp" <<EOF
#!/bin/sh
# CRIU $have ($(root_origin)) from the Debian root $ROOT,
# run with that root's loader and libraries; acts on the host like any criu.
# Written by pagehop scripts/setup-criu.sh.
CRIU_LIBS_DIR="\${CRIU_LIBS_DIR:-$ROOT/usr/lib/criu}"
export CRIU_LIBS_DIR
exec "$ROOT/lib64/ld-linux-x86-64.so.2" --argv0 criu \\
    --library-path "$LIBPATH" \\
    "$(root_bin)" "\$@"
EOF
chmod 755 "$tmp"
mv -f "$tmp" "$WRAPPER"

v="$(wrapper_version || true)"
case "$v" in
    4.2.*) ;;
    *) die "$WRAPPER does not report CRIU 4.2.x (got '${v}'); see $LOG" ;;
esac
if out="$("$WRAPPER" check 2>&1)"; then
    say "criu check: $(printf '%s\n' "$out" | tail -n1)"
else
    say "warning: '$WRAPPER check' failed:"
    printf '%s\n' "$out" | tail -n 10 >&2
fi
say "CRIU $v ($(root_origin)) installed: $WRAPPER"
