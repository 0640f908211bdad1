#!/usr/bin/env bash
# Installs what pagehop's build and tests need on a fresh machine, idempotently:
#   - the nightly toolchain's rust-src (the eBPF side builds core with -Z build-std),
#   - bpf-linker, built against the nightly toolchain's own LLVM (no system LLVM),
#   - iproute2 (ip, tc) for the network-namespace tests.
# Each step says what it does; a step whose result is already present is skipped.
set -euo pipefail

say() { printf 'setup: %s\n' "$*" >&2; }

NIGHTLY="${PAGEHOP_NIGHTLY:-nightly}"

if ! command -v rustup >/dev/null 2>&1; then
    say "rustup is missing; pagehop needs a rustup-managed toolchain with '$NIGHTLY'"
    exit 1
fi

if ! rustup toolchain list | grep -q "^${NIGHTLY}"; then
    say "installing the $NIGHTLY toolchain"
    rustup toolchain install "$NIGHTLY" --profile minimal
fi

if ! rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null | grep -q '^rust-src'; then
    say "adding rust-src to $NIGHTLY (the eBPF build compiles core itself)"
    rustup component add rust-src --toolchain "$NIGHTLY"
fi

export PATH="$HOME/.cargo/bin:$PATH"
# A bpf-linker that no longer runs (its nightly's libLLVM was replaced) is rebuilt.
if ! bpf-linker --version >/dev/null 2>&1; then
    sysroot="$(rustc +"$NIGHTLY" --print sysroot)"
    llvm_major="$(rustc +"$NIGHTLY" -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')"
    libllvm="$(ls "$sysroot"/lib/libLLVM.so.* 2>/dev/null | head -n1 || true)"
    if [ -z "$libllvm" ] || [ -z "$llvm_major" ]; then
        say "cannot find the $NIGHTLY toolchain's libLLVM (looked in $sysroot/lib)"
        exit 1
    fi
    prefix="$HOME/.cache/pagehop/llvm-prefix"
    mkdir -p "$prefix/lib"
    ln -sf "$libllvm" "$prefix/lib/libLLVM.so"
    say "building bpf-linker against $(basename "$libllvm") (LLVM $llvm_major); this takes about 2 minutes"
    LLVM_PREFIX="$prefix" RUSTFLAGS="-C link-arg=-Wl,-rpath,$sysroot/lib" \
        cargo +"$NIGHTLY" install --force --locked bpf-linker --no-default-features --features "llvm-$llvm_major"
fi

missing_pkgs=""
command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1 || missing_pkgs="$missing_pkgs iproute2"
command -v iperf3 >/dev/null 2>&1 || missing_pkgs="$missing_pkgs iperf3"
if [ -n "$missing_pkgs" ]; then
    say "installing$missing_pkgs (network namespaces and the iperf3 baseline)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing_pkgs >/dev/null
fi

# The applications the tests migrate (redis, nginx, Debian's python3, ...),
# then CRIU 4.2.1 in its own Debian root behind /opt/pagehop/bin/criu.
scripts="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$scripts/setup-apps.sh"
bash "$scripts/setup-criu.sh"

say "toolchain ready"
