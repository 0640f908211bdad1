//! One migration of a fresh workload, for the `cargo bench` harnesses that
//! compare send options (`migration.rs`, `postcopy.rs`); not a benchmark
//! itself. The scenario comparisons with baselines are `pagehop bench`'s.
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use pagehop_bench::netns::NetnsPair;

pub use pagehop_bench::bins::pagehop as pagehop_bin;
pub use pagehop_bench::bins::workload as workload_bin;

/// Where a migration runs: from namespace `a` to `b` of a pair, or over
/// loopback on this host.
pub enum Path<'a> {
    Veth(&'a NetnsPair),
    // Each bench compiles this module on its own; migration.rs never uses it.
    #[allow(dead_code)]
    Loopback,
}

impl Path<'_> {
    /// `pagehop` on the destination side (`dest`) or the source side.
    fn pagehop(&self, dest: bool) -> Command {
        match self {
            Path::Veth(pair) => {
                NetnsPair::command(if dest { &pair.b } else { &pair.a }, pagehop_bin())
            }
            Path::Loopback => Command::new(pagehop_bin()),
        }
    }

    fn listen(&self, port: u16) -> String {
        match self {
            Path::Veth(pair) => format!("{}:{port}", pair.addr_b),
            Path::Loopback => format!("127.0.0.1:{port}"),
        }
    }
}

/// Starts a workload with `source_args`, migrates it over `path` with
/// `send --json` plus `send_args` to a recv that restores it with `--resume
/// <resume_args>`, kills the restored process, and returns send's report.
/// Panics with both sides' errors when send prints no report.
pub fn migrate(
    path: &Path<'_>,
    port: u16,
    source_args: &str,
    resume_args: &str,
    send_args: &[&str],
) -> serde_json::Value {
    let dir = std::env::temp_dir().join(format!("pagehop-bench-{port}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let listen = path.listen(port);
    let restore = format!(
        "exec {bin} --resume {resume_args} > /dev/null 2>&1",
        bin = workload_bin()
    );
    let token = dir.join("token");
    std::fs::write(&token, "pagehop-benchmark-token-0123456789").unwrap();
    let recv = path
        .pagehop(true)
        .args(["recv", "--listen", &listen, "--token-file"])
        .arg(&token)
        .args(["--restore-cmd", &restore, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("recv");
    let mut source = Command::new(workload_bin())
        .args(source_args.split(' '))
        .stdout(Stdio::piped())
        .spawn()
        .expect("workload");
    let mut lines = BufReader::new(source.stdout.take().unwrap()).lines();
    lines.next();
    std::thread::spawn(move || for _ in lines {});
    std::thread::sleep(Duration::from_millis(500));
    let out = path
        .pagehop(false)
        .args(["send", "--pid", &source.id().to_string(), "--to", &listen])
        .arg("--token-file")
        .arg(&token)
        .arg("--json")
        .args(send_args)
        .output()
        .expect("send");
    let recv_out = recv.wait_with_output().expect("recv");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "send failed: {}\nrecv: {}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&recv_out.stderr)
        )
    });
    let _ = source.wait();
    if let Ok(r) = serde_json::from_slice::<serde_json::Value>(&recv_out.stdout)
        && let Some(pid) = r["restored_pid"].as_i64()
    {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let _ = std::fs::remove_dir_all(&dir);
    report
}
