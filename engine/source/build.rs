//! Builds the eBPF programs (ebpf/pagehop-ebpf) for bpfel-unknown-none with the
//! nightly toolchain and bpf-linker, and leaves the object in OUT_DIR, where
//! `src/bpf/mod.rs` embeds it. `scripts/setup.sh` installs both tools.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "pagehop-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/pagehop-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
        .context("building the eBPF programs failed; run scripts/setup.sh to install nightly rust-src and bpf-linker")
}
