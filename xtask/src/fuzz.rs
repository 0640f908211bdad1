//! `cargo xtask fuzz [--seconds N] [TARGET]`: a short run of the cargo-fuzz
//! targets in `fuzz/` (nightly, libFuzzer, AddressSanitizer), installing
//! cargo-fuzz first if it is missing.
//!
//! Each target starts from its seeds (`fuzz/seeds/TARGET`, committed) and
//! its corpus (`fuzz/corpus/TARGET`, grown by every run, not committed). A
//! crash stops the run; libFuzzer saves the input under
//! `fuzz/artifacts/TARGET/` and prints how to reproduce it.
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::{cargo, root, run};

/// The fuzz targets (`[[bin]]`s of fuzz/Cargo.toml).
pub const TARGETS: [&str; 3] = ["frame_decoder", "image_reader", "criu_images"];

/// The toolchain cargo-fuzz builds with (it needs `-Z` flags).
fn nightly() -> String {
    std::env::var("PAGEHOP_NIGHTLY").unwrap_or_else(|_| "nightly".into())
}

/// `cargo +nightly ...` through rustup's proxy, without the variables the
/// outer (stable) cargo set for xtask, which would pin the toolchain.
fn nightly_cargo() -> Command {
    let proxy = std::env::var_os("HOME")
        .map(|home| Path::new(&home).join(".cargo/bin/cargo"))
        .filter(|p| p.exists());
    // `cargo()` runs the toolchain's own cargo ($CARGO), which does not
    // take `+toolchain`; the rustup proxy does. Same PATH as `cargo()`
    // (bpf-linker lives in ~/.cargo/bin).
    let mut cmd = Command::new(proxy.as_deref().unwrap_or(Path::new("cargo")));
    if let Some((_, Some(path))) = cargo().get_envs().find(|(key, _)| *key == "PATH") {
        cmd.env("PATH", path);
    }
    cmd.arg(format!("+{}", nightly()));
    for var in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTUP_TOOLCHAIN",
        "RUSTC_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn has_cargo_fuzz() -> bool {
    nightly_cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    if has_cargo_fuzz() {
        return Ok(());
    }
    eprintln!("xtask: cargo-fuzz is missing; installing it from crates.io (about 2 minutes)");
    run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    if !has_cargo_fuzz() {
        bail!(
            "cargo-fuzz was installed but `cargo +{} fuzz` does not run",
            nightly()
        );
    }
    Ok(())
}

pub fn fuzz(seconds: u64, target: Option<&str>) -> anyhow::Result<()> {
    if seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let targets: Vec<&str> = match target {
        None => TARGETS.to_vec(),
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("unknown fuzz target {t:?}; the targets are {TARGETS:?}"),
    };
    // The fuzz crate depends on the engine, whose build script builds the
    // eBPF programs: it needs what setup installs.
    crate::setup()?;
    ensure_cargo_fuzz()?;
    let fuzz_dir = root().join("fuzz");
    for t in &targets {
        let corpus = Path::new("fuzz/corpus").join(t);
        std::fs::create_dir_all(root().join(&corpus))
            .with_context(|| format!("creating {}", corpus.display()))?;
        let mut cmd = nightly_cargo();
        // cargo-fuzz looks for its binaries in fuzz/target: keep the build there.
        cmd.env_remove("CARGO_TARGET_DIR")
            .args(["fuzz", "run", t])
            .arg(&corpus)
            .arg(Path::new("fuzz/seeds").join(t))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            // A single input taking this long is a hang.
            .arg("-timeout=10")
            .arg("-print_final_stats=1");
        let dict = fuzz_dir.join("dicts").join(format!("{t}.dict"));
        if dict.exists() {
            cmd.arg(format!("-dict={}", dict.display()));
        }
        run(&mut cmd).with_context(|| {
            format!(
                "fuzz target {t} failed: the crashing input is under fuzz/artifacts/{t}/; \
                 replay it with `cargo +nightly fuzz run {t} fuzz/artifacts/{t}/<file>`"
            )
        })?;
    }
    eprintln!(
        "xtask: fuzzed {} for {seconds} s each, no crash; for longer runs see fuzz/README.md",
        targets.join(", ")
    );
    Ok(())
}
