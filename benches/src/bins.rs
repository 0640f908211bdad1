//! Where tests and benchmarks find pagehop's binaries (`pagehop`,
//! `pagehop-workload`): in `$PAGEHOP_BIN_DIR`, or else in cargo's
//! `target/<profile>/`, the parent of the `deps/` directory that holds the
//! running test or benchmark executable. Build them first (`cargo build
//! --bins`, which `cargo xtask test` does).
use std::path::PathBuf;
use std::sync::OnceLock;

/// The `pagehop` binary.
pub fn pagehop() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| locate("pagehop"))
}

/// The `pagehop-workload` binary.
pub fn workload() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| locate("pagehop-workload"))
}

fn locate(name: &str) -> String {
    let dir = match std::env::var_os("PAGEHOP_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("the running executable's path");
            let mut dir = exe
                .parent()
                .expect("executable in a directory")
                .to_path_buf();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build pagehop's binaries first (`cargo build --bins`, or \
         `cargo build --release --bins` for benchmarks), or point PAGEHOP_BIN_DIR at them",
        path.display()
    );
    path.to_string_lossy().into_owned()
}
