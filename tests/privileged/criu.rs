//! CRIU mode end to end (`send --criu`, `recv --criu DIR`) on unmodified
//! programs from Debian's packages, between two network namespaces: the
//! source tree lives in its own pid namespace (so that its pids are free for
//! the restore while it is frozen), and the checks are on the programs'
//! own data: redis keys and acknowledged writes, a Python dict's checksum,
//! the file nginx serves.
//!
//! Failures: CRIU refusing the tree, recv killed before the restore, `criu
//! restore` failing, the link cut during post-copy, an old CRIU. Each must
//! leave exactly one copy running (or, after the commit, none lost).
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pagehop_bench::netns::NetnsPair;
use pagehop_bench::redis::{self, PORT as REDIS_PORT, in_netns};

use crate::common::*;
use crate::migrate::{Cgroup, wait_for_line};

const TOKEN: &str = "pagehop-criu-token-0123456789abcdef01";

fn app(name: &str) -> String {
    format!("{}/apps/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A program started in its own pid namespace (`unshare -p -f`) inside a
/// network namespace; the tree's root is `unshare`'s child (pid 1 inside).
struct Tree {
    unshare: Child,
    root: i32,
}

impl Tree {
    fn start(ns: &str, argv: &[&str], env: &[(&str, &str)]) -> Tree {
        Tree::start_in(ns, None, argv, env)
    }

    /// With `cgroup`, the way a container starts: the first process of the
    /// new pid namespace moves itself into the cgroup, then execs the
    /// program, so the cgroup holds exactly the tree.
    fn start_in(ns: &str, cgroup: Option<&Path>, argv: &[&str], env: &[(&str, &str)]) -> Tree {
        let mut cmd = in_netns(ns, "unshare");
        cmd.args(["-p", "-f"]);
        if let Some(cgroup) = cgroup {
            cmd.args(["sh", "-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\""])
                .arg(cgroup);
        }
        cmd.arg("setsid")
            .args(argv)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let unshare = cmd.spawn().expect("start the tree");
        let deadline = Instant::now() + Duration::from_secs(10);
        let root = loop {
            let below = pagehop::sys::process::descendants(unshare.id() as i32);
            // nsenter execs unshare, which forks the root.
            if let Some(&root) = below.get(1) {
                break root;
            }
            assert!(Instant::now() < deadline, "{argv:?} did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        Tree { unshare, root }
    }

    /// The root's state letter, and whether it still exists.
    fn state(&self) -> Option<char> {
        process_state(self.root)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for pid in pagehop::sys::process::descendants(self.unshare.id() as i32)
            .into_iter()
            .rev()
        {
            let _ = pagehop::sys::process::kill(pid, libc::SIGKILL);
        }
        let _ = self.unshare.wait();
    }
}

/// Two namespaces, a recv in b restoring into an image directory, and the
/// scratch files.
struct CriuPair {
    dir: TempDir,
    pair: NetnsPair,
    listen: String,
    recv: Option<Child>,
    /// When set, send names the tree by this cgroup (`--cgroup`) instead of
    /// by its root's pid.
    cgroup: Option<PathBuf>,
}

impl CriuPair {
    fn new(name: &str, index: u8) -> CriuPair {
        let dir = TempDir::new(name);
        pagehop_bench::write_secret(&dir.path("token"), TOKEN).expect("token");
        let pair = NetnsPair::create(&format!("cr{index}"), index).expect("network namespaces");
        let listen = format!("{}:{}", pair.addr_b, 7800 + index as u16);
        CriuPair {
            dir,
            pair,
            listen,
            recv: None,
            cgroup: None,
        }
    }

    fn start_recv(&mut self, extra: &[&str]) {
        let recv = in_netns(&self.pair.b, pagehop_bin())
            .arg("recv")
            .args(["--listen", &self.listen, "--token-file"])
            .arg(self.dir.path("token"))
            .arg("--criu")
            .arg(self.dir.path("images"))
            .args(["--criu-restore-opt=--tcp-close", "--json"])
            .args(extra)
            .stdout(std::fs::File::create(self.dir.path("recv.out")).expect("recv.out"))
            .stderr(std::fs::File::create(self.dir.path("recv.err")).expect("recv.err"))
            .spawn()
            .expect("start pagehop recv");
        self.recv = Some(recv);
        wait_for_line(
            &self.dir.path("recv.err"),
            "listening on",
            Duration::from_secs(10),
        );
    }

    fn send(&self, root: i32, extra: &[&str]) -> Command {
        let mut cmd = in_netns(&self.pair.a, pagehop_bin());
        cmd.arg("send");
        match &self.cgroup {
            Some(cgroup) => cmd.arg("--cgroup").arg(cgroup),
            None => cmd.args(["--pid", &root.to_string()]),
        };
        cmd.args(["--to", &self.listen])
            .arg("--token-file")
            .arg(self.dir.path("token"))
            .args(["--json"])
            .args(extra);
        cmd
    }

    /// Starts send in the background, its output captured.
    fn spawn_send(&self, root: i32, extra: &[&str]) -> Child {
        self.send(root, extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pagehop send")
    }

    /// Waits for a send started with `spawn_send` and expects success.
    fn finish_send(&self, send: Child, what: &str) -> serde_json::Value {
        let out = send.wait_with_output().expect("pagehop send");
        assert!(
            out.status.success(),
            "{what}: {}\nrecv: {}",
            String::from_utf8_lossy(&out.stderr),
            self.recv_err()
        );
        serde_json::from_slice(&out.stdout).expect("send report is JSON")
    }

    /// Runs send to its end, expecting success; returns its report.
    fn migrate(&mut self, root: i32, extra: &[&str]) -> serde_json::Value {
        let out = self.send(root, extra).output().expect("run pagehop send");
        assert!(
            out.status.success(),
            "pagehop send failed: {}\nrecv: {}",
            String::from_utf8_lossy(&out.stderr),
            self.recv_err()
        );
        serde_json::from_slice(&out.stdout).expect("send report is JSON")
    }

    /// Runs send expecting it to fail; returns its stderr.
    fn migrate_fails(&self, root: i32, extra: &[&str]) -> String {
        let out: Output = self.send(root, extra).output().expect("run pagehop send");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "pagehop send should have failed: {stderr}"
        );
        stderr
    }

    fn recv_err(&self) -> String {
        std::fs::read_to_string(self.dir.path("recv.err")).unwrap_or_default()
    }

    /// Waits for recv to exit; returns (success, its JSON report if any).
    fn finish_recv(&mut self) -> (bool, Option<serde_json::Value>) {
        let mut recv = self.recv.take().expect("recv started");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = recv.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "recv still runs: {}",
                self.recv_err()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = std::fs::read_to_string(self.dir.path("recv.out")).unwrap_or_default();
        (status.success(), serde_json::from_str(out.trim()).ok())
    }

    /// Processes in the destination's network namespace.
    fn destination_pids(&self) -> Vec<i32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.pair.b])
            .output()
            .expect("ip netns pids");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// A command of the test apps, run in namespace `ns`.
    fn python(&self, ns: &str, script: &str) -> Command {
        let mut cmd = in_netns(ns, "python3");
        cmd.arg(app(script));
        cmd
    }
}

impl Drop for CriuPair {
    fn drop(&mut self) {
        if let Some(mut recv) = self.recv.take() {
            let _ = recv.kill();
            let _ = recv.wait();
        }
        // The restored tree, whatever state it is in.
        for pid in self.destination_pids() {
            let _ = pagehop::sys::process::kill(pid, libc::SIGKILL);
        }
    }
}

/// redis-server in its own pid namespace in `ns`, answering on `addr`.
fn start_redis(p: &CriuPair, ns: &str, addr: &str) -> Tree {
    let tree = Tree::start_in(
        ns,
        p.cgroup.as_deref(),
        &[
            "redis-server",
            "--port",
            REDIS_PORT,
            "--bind",
            "0.0.0.0",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--logfile",
            "",
        ],
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pong = in_netns(ns, "redis-cli")
            .args(["-h", addr, "-p", REDIS_PORT, "ping"])
            .output()
            .expect("redis-cli");
        if String::from_utf8_lossy(&pong.stdout).contains("PONG") {
            break;
        }
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    tree
}

/// The keys a redis test loads, of `redis::VALUE_SIZE` bytes (about 60 MiB).
const KEYS: usize = 100_000;

fn load_redis(p: &CriuPair) {
    redis::load(&p.pair.a, &p.pair.addr_a, KEYS).expect("loading redis");
}

/// Every loaded key and every acknowledged write is at the destination,
/// and it takes a write and a read.
fn check_redis(p: &CriuPair, acked: &Path) -> String {
    let out = redis::check(&p.pair.b, &p.pair.addr_b, KEYS, acked)
        .expect("checking redis at the destination");
    assert!(out.contains("ok keys="), "{out}");
    out
}

/// A writer in the source's namespace: `SET w:i` until its connection ends.
fn start_writer(p: &CriuPair, acked: &Path) -> Child {
    p.python(&p.pair.a, "redis_tool.py")
        .args(["write", &p.pair.addr_a, REDIS_PORT])
        .arg(acked)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the writer")
}

fn wait_exit(child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "{what} did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn acked_writes(acked: &Path) -> usize {
    std::fs::read_to_string(acked)
        .unwrap_or_default()
        .lines()
        .count()
}

fn criu_report(report: &serde_json::Value) -> &serde_json::Value {
    let criu = &report["criu"];
    assert!(criu.is_object(), "no criu part in the report: {report}");
    criu
}

/// redis loaded with keys and written to during pre-copy, migrated in
/// `mode`; every key and acknowledged write arrives, and it serves after.
fn redis_migration(name: &str, index: u8, mode: &str, rate: Option<&str>) -> serde_json::Value {
    redis_migration_in(name, index, mode, rate, None)
}

/// [`redis_migration`], the tree in `cgroup` and named by it when given.
fn redis_migration_in(
    name: &str,
    index: u8,
    mode: &str,
    rate: Option<&str>,
    cgroup: Option<&Path>,
) -> serde_json::Value {
    require_root();
    let mut p = CriuPair::new(name, index);
    p.cgroup = cgroup.map(Path::to_path_buf);
    if let Some(rate) = rate {
        p.pair.shape(rate).expect("shape the link");
    }
    p.start_recv(&[]);
    let source = start_redis(&p, &p.pair.a.clone(), &p.pair.addr_a.clone());
    load_redis(&p);
    let acked = p.dir.path("acked");
    let mut writer = start_writer(&p, &acked);
    // Under way before the migration starts, however slow the machine.
    let deadline = Instant::now() + Duration::from_secs(10);
    while acked_writes(&acked) == 0 {
        assert!(Instant::now() < deadline, "the writer never wrote");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    let report = p.migrate(
        source.root,
        &["--criu", "--criu-opt=--tcp-close", "--mode", mode],
    );
    println!("{mode}: {report}");
    wait_exit(&mut writer, "the writer");
    assert!(acked_writes(&acked) > 0, "the writer wrote nothing");
    let (ok, recv_report) = p.finish_recv();
    assert!(ok, "recv failed: {}", p.recv_err());
    let recv_report = recv_report.expect("recv report");
    println!("{}", check_redis(&p, &acked));
    assert_eq!(report["mode"], mode);
    let criu = criu_report(&report);
    assert_eq!(criu["tasks"], 1, "{criu}");
    assert!(criu["lazy_pages"].as_u64().unwrap_or(0) > 10_000, "{criu}");
    assert!(criu["dump_ms"].as_f64().unwrap_or(0.0) > 0.0, "{criu}");
    assert!(
        recv_report["criu"]["tasks"][0]["vpid"] == 1,
        "{recv_report}"
    );
    // The source is gone; the destination's copy is the only one.
    let deadline = Instant::now() + Duration::from_secs(5);
    while source.state().is_some_and(|s| s != 'Z') {
        assert!(Instant::now() < deadline, "the source still exists");
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(cgroup) = cgroup {
        // The restored tree is in the cgroup, alone.
        let inside = std::fs::read_to_string(cgroup.join("cgroup.procs")).expect("cgroup.procs");
        let pids: Vec<i32> = inside.lines().filter_map(|l| l.parse().ok()).collect();
        assert_eq!(pids, p.destination_pids(), "the cgroup holds: {inside}");
    }
    report
}

#[test]
#[ignore = "needs root"]
fn redis_is_migrated_with_criu_in_hybrid_mode() {
    let report = redis_migration("criu-redis-hybrid", 20, "hybrid", None);
    assert!(report["rounds"].as_u64().unwrap_or(0) >= 1, "{report}");
}

#[test]
#[ignore = "needs root"]
fn redis_is_migrated_with_criu_in_postcopy_mode() {
    let report = redis_migration("criu-redis-postcopy", 21, "postcopy", None);
    let pending = criu_report(&report)["pending_pages"].as_u64().unwrap_or(0);
    assert!(pending > 10_000, "post-copy left everything lazy: {report}");
    // Every pending page, and any zero page faulted in around them.
    assert!(
        report["installed_pages"].as_u64().unwrap_or(0) >= pending,
        "{report}"
    );
}

/// A container's shape: the tree in its own cgroup v2 directory, and send
/// told only that directory. The restored tree is back in the same cgroup
/// (CRIU's default), with every key.
#[test]
#[ignore = "needs root"]
fn a_tree_named_by_its_cgroup_is_migrated_into_the_same_cgroup() {
    let group = Cgroup::create("pagehop-test-criu-cgroup");
    let report = redis_migration_in("criu-cgroup", 30, "hybrid", None, Some(&group.0));
    let criu = criu_report(&report);
    assert_eq!(
        criu["cgroup"].as_str(),
        group.0.canonicalize().unwrap().to_str(),
        "{criu}"
    );
}

/// A process that entered the cgroup from outside the tree (the way `docker
/// exec` adds one) would be left behind by CRIU: refused, naming it, and
/// the source runs on untouched.
#[test]
#[ignore = "needs root"]
fn a_cgroup_holding_a_second_tree_is_refused() {
    require_root();
    let group = Cgroup::create("pagehop-test-criu-cgroup-two");
    let mut p = CriuPair::new("criu-cgroup-two", 31);
    p.cgroup = Some(group.0.clone());
    p.start_recv(&[]);
    let source = start_redis(&p, &p.pair.a.clone(), &p.pair.addr_a.clone());
    let stranger = KillOnDrop(
        Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("start sleep"),
    );
    group.add(stranger.0.id() as i32);
    let stderr = p.migrate_fails(source.root, &["--criu", "--criu-opt=--tcp-close"]);
    assert!(
        stderr.contains("2 process trees") && stderr.contains(&stranger.0.id().to_string()),
        "{stderr}"
    );
    assert_runs(source.root, "the source redis");
}

#[test]
#[ignore = "needs root"]
fn the_link_cut_during_criu_postcopy_is_survived() {
    let mut p = CriuPair::new("criu-cut", 22);
    require_root();
    p.pair.shape("50mbit").expect("shape the link");
    p.start_recv(&["--reconnect-timeout", "10"]);
    let source = start_redis(&p, &p.pair.a.clone(), &p.pair.addr_a.clone());
    load_redis(&p);
    let send = p.spawn_send(
        source.root,
        &[
            "--criu",
            "--criu-opt=--tcp-close",
            "--mode",
            "postcopy",
            "--reconnect-timeout",
            "10",
        ],
    );
    wait_for_line(
        &p.dir.path("recv.err"),
        "the tree runs",
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_millis(500));
    let cut = in_netns(&p.pair.a, "ss")
        .args(["-K", "dst", &p.pair.addr_b])
        .output()
        .expect("ss -K");
    assert!(cut.status.success(), "ss -K failed: {cut:?}");
    let report = p.finish_send(send, "send did not survive the cut");
    assert!(
        report["reconnects"].as_u64().unwrap_or(0) >= 1,
        "no reconnect happened (was post-copy over before the cut?): {report}"
    );
    let (ok, _) = p.finish_recv();
    assert!(ok, "recv failed: {}", p.recv_err());
    check_redis(&p, &p.dir.path("no-writer"));
}

/// A Python service with a changing dict, in its own pid namespace.
fn start_dict_service(p: &CriuPair, entries: usize, env: &[(&str, &str)]) -> (Tree, PathBuf) {
    let out = p.dir.path("dict");
    std::fs::create_dir_all(&out).expect("dict dir");
    let script = app("dict_service.py");
    let tree = Tree::start(
        &p.pair.a,
        &[
            "python3",
            &script,
            &entries.to_string(),
            out.to_str().expect("utf-8 path"),
        ],
        env,
    );
    // It writes its pid and a newline once the dict is built.
    wait_for_line(&out.join("ready"), "\n", Duration::from_secs(30));
    (tree, out)
}

/// Signals `sig` to `pid` and waits for the file it makes; returns its
/// checksums, which must agree.
fn dict_checksum(pid: i32, sig: i32, file: &Path) -> String {
    pagehop::sys::process::kill(pid, sig).expect("signal the dict service");
    let text = wait_for_line(file, "entries=", Duration::from_secs(30));
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    assert_eq!(
        field("full="),
        field("running="),
        "the dict came back wrong: {text}"
    );
    text
}

fn restored_root(recv_report: &serde_json::Value) -> i32 {
    recv_report["restored_pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no restored pid: {recv_report}")) as i32
}

#[test]
#[ignore = "needs root"]
fn a_python_dict_service_is_migrated_with_its_dict_intact() {
    require_root();
    let mut p = CriuPair::new("criu-python", 23);
    p.start_recv(&[]);
    let (source, out) = start_dict_service(&p, 400_000, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let report = p.migrate(source.root, &["--criu", "--mode", "hybrid"]);
    println!("python: {report}");
    let (ok, recv_report) = p.finish_recv();
    assert!(ok, "recv failed: {}", p.recv_err());
    let root = restored_root(&recv_report.expect("recv report"));
    assert_runs(root, "the restored dict service");
    let text = dict_checksum(root, libc::SIGUSR1, &out.join("check-1.txt"));
    println!("restored: {text}");
    // It keeps changing its dict after the migration.
    std::thread::sleep(Duration::from_millis(300));
    let later = dict_checksum(root, libc::SIGUSR1, &out.join("check-2.txt"));
    assert_ne!(text, later, "the restored service does not run on");
}

#[test]
#[ignore = "needs root"]
fn a_process_that_forks_during_criu_postcopy_is_served() {
    require_root();
    let mut p = CriuPair::new("criu-fork", 24);
    p.pair.shape("40mbit").expect("shape the link");
    p.start_recv(&[]);
    let (source, out) = start_dict_service(&p, 400_000, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let send = p.spawn_send(source.root, &["--criu", "--mode", "postcopy"]);
    let log = wait_for_line(
        &p.dir.path("recv.err"),
        "the tree runs",
        Duration::from_secs(60),
    );
    let root: i32 = log
        .split("root pid ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no root pid in {log}"));
    // The child reads the whole dict while most of it is still on the source.
    let text = dict_checksum(root, libc::SIGUSR2, &out.join("fork-1.txt"));
    p.finish_send(send, "send failed");
    let (ok, recv_report) = p.finish_recv();
    assert!(ok, "recv failed: {}", p.recv_err());
    let recv_report = recv_report.expect("recv report");
    println!("fork: {text}\n{recv_report}");
    assert!(
        recv_report["postcopy"]["forks"].as_u64().unwrap_or(0) >= 1,
        "no fork was seen during post-copy: {recv_report}"
    );
    dict_checksum(root, libc::SIGUSR1, &out.join("check-1.txt"));
}

#[test]
#[ignore = "needs root"]
fn an_nginx_tree_is_migrated_and_serves_the_same_file() {
    require_root();
    let mut p = CriuPair::new("criu-nginx", 25);
    let prefix = p.dir.path("nginx");
    std::fs::create_dir_all(prefix.join("www")).expect("nginx dirs");
    let blob: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(prefix.join("www/blob.bin"), &blob).expect("blob");
    // Workers run as root: this machine's root lacks CAP_SYS_RESOURCE,
    // without which CRIU cannot read another user's rlimits.
    std::fs::write(
        prefix.join("nginx.conf"),
        format!(
            "daemon off;\nuser root root;\nmaster_process on;\nworker_processes 2;\n\
             pid {0}/nginx.pid;\nerror_log stderr;\nevents {{ worker_connections 64; }}\n\
             http {{ access_log off; server {{ listen 8080; root {0}/www; }} }}\n",
            prefix.display()
        ),
    )
    .expect("nginx.conf");
    p.start_recv(&[]);
    let conf = prefix.join("nginx.conf");
    let source = Tree::start(
        &p.pair.a,
        &[
            "nginx",
            "-c",
            conf.to_str().expect("utf-8"),
            "-p",
            prefix.to_str().expect("utf-8"),
        ],
        &[],
    );
    let fetch = |ns: &str, addr: &str| -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = in_netns(ns, "curl")
                .args(["-sf", &format!("http://{addr}:8080/blob.bin")])
                .output()
                .expect("curl");
            if out.status.success() {
                return out.stdout;
            }
            assert!(Instant::now() < deadline, "nginx does not serve in {ns}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(
        fetch(&p.pair.a, &p.pair.addr_a) == blob,
        "the source serves the file"
    );
    let before = pagehop::sys::process::descendants(source.root).len();
    assert_eq!(before, 3, "nginx master and two workers");
    let report = p.migrate(
        source.root,
        &["--criu", "--criu-opt=--tcp-close", "--mode", "hybrid"],
    );
    println!("nginx: {report}");
    let (ok, recv_report) = p.finish_recv();
    assert!(ok, "recv failed: {}", p.recv_err());
    let recv_report = recv_report.expect("recv report");
    assert_eq!(criu_report(&report)["tasks"], 3, "{report}");
    assert_eq!(
        recv_report["criu"]["tasks"].as_array().map(Vec::len),
        Some(3),
        "{recv_report}"
    );
    assert!(
        fetch(&p.pair.b, &p.pair.addr_b) == blob,
        "the restored tree serves the file"
    );
    let root = restored_root(&recv_report);
    assert_eq!(pagehop::sys::process::descendants(root).len(), 3);
}

#[test]
#[ignore = "needs root"]
fn a_tree_criu_refuses_runs_on_untouched_with_criu_s_reason() {
    require_root();
    let mut p = CriuPair::new("criu-refused", 26);
    p.start_recv(&[]);
    // A TCP connection, and no --tcp-close or --tcp-established for it.
    let (source, out) = start_dict_service(&p, 100_000, &[("HOLD_TCP", "1")]);
    let stderr = p.migrate_fails(source.root, &["--criu", "--mode", "hybrid"]);
    assert!(stderr.contains("criu dump failed"), "{stderr}");
    assert!(
        stderr.to_lowercase().contains("tcp"),
        "CRIU's reason is not in the error: {stderr}"
    );
    assert_runs(source.root, "the source");
    assert!(
        userfaultfds_of(source.root).is_empty(),
        "tracking was left in the source"
    );
    dict_checksum(source.root, libc::SIGUSR1, &out.join("check-1.txt"));
    let (ok, _) = p.finish_recv();
    assert!(!ok, "recv reported success");
    assert!(
        p.destination_pids().is_empty(),
        "something runs at the destination"
    );
}

#[test]
#[ignore = "needs root"]
fn killing_recv_before_the_restore_leaves_the_criu_source_running() {
    require_root();
    let mut p = CriuPair::new("criu-recv-killed", 27);
    p.pair.shape("20mbit").expect("shape the link");
    p.start_recv(&[]);
    let (source, out) = start_dict_service(&p, 400_000, &[]);
    let send = p.spawn_send(source.root, &["--criu", "--mode", "hybrid"]);
    wait_for_line(
        &p.dir.path("recv.err"),
        "connected",
        Duration::from_secs(20),
    );
    std::thread::sleep(Duration::from_millis(1000));
    let mut recv = p.recv.take().expect("recv");
    recv.kill().expect("kill recv");
    let _ = recv.wait();
    let out_send = send.wait_with_output().expect("pagehop send");
    assert!(
        !out_send.status.success(),
        "send succeeded without a destination"
    );
    assert_runs(source.root, "the source");
    assert!(
        userfaultfds_of(source.root).is_empty(),
        "tracking was left in the source"
    );
    dict_checksum(source.root, libc::SIGUSR1, &out.join("check-1.txt"));
    assert!(
        p.destination_pids().is_empty(),
        "something runs at the destination"
    );
}

#[test]
#[ignore = "needs root"]
fn a_failing_criu_restore_leaves_the_source_running() {
    require_root();
    let mut p = CriuPair::new("criu-restore-fails", 28);
    // The destination's port is taken: redis's listening socket cannot be restored.
    let blocker = in_netns(&p.pair.b, "python3")
        .args([
            "-c",
            "import socket,time\ns=socket.socket()\ns.bind(('0.0.0.0',6379))\ns.listen()\ntime.sleep(600)",
        ])
        .spawn()
        .expect("port blocker");
    let mut blocker = KillOnDrop(blocker);
    p.start_recv(&[]);
    let source = start_redis(&p, &p.pair.a.clone(), &p.pair.addr_a.clone());
    load_redis(&p);
    let stderr = p.migrate_fails(
        source.root,
        &["--criu", "--criu-opt=--tcp-close", "--mode", "hybrid"],
    );
    assert!(stderr.contains("criu restore failed"), "{stderr}");
    assert_runs(source.root, "the source redis");
    // Every key is still served by the source.
    redis::check(&p.pair.a, &p.pair.addr_a, KEYS, &p.dir.path("no-writer"))
        .expect("checking the source redis");
    let (ok, _) = p.finish_recv();
    assert!(!ok, "recv reported success");
    let _ = blocker.0.kill();
    let left: Vec<i32> = p
        .destination_pids()
        .into_iter()
        .filter(|&pid| pid != blocker.0.id() as i32)
        .collect();
    assert!(
        left.is_empty(),
        "restored processes left at the destination: {left:?}"
    );
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs root"]
fn an_old_criu_and_what_criu_mode_cannot_do_are_refused_with_the_reason() {
    require_root();
    let p = CriuPair::new("criu-old", 29);
    let fake = p.dir.path("criu-4.1");
    std::fs::write(&fake, "#!/bin/sh\necho 'Version: 4.1.1'\n").expect("fake criu");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (source, _out) = start_dict_service(&p, 10_000, &[]);
    let stderr = p.migrate_fails(
        source.root,
        &[&format!("--criu={}", fake.display()), "--mode", "hybrid"],
    );
    assert!(
        stderr.contains("4.1.1") && stderr.contains("SO_PASSCRED"),
        "{stderr}"
    );
    assert_runs(source.root, "the source");
    let recv = Command::new(pagehop_bin())
        .args([
            "recv",
            "--listen",
            "127.0.0.1:0",
            "--unauthenticated",
            "--criu",
        ])
        .arg(p.dir.path("images"))
        .arg("--criu-bin")
        .arg(&fake)
        .output()
        .expect("pagehop recv");
    assert!(!recv.status.success());
    assert!(String::from_utf8_lossy(&recv.stderr).contains("too old"));
    // --verify cannot compare a restored tree that already runs, and a
    // recorded working set is one process's: refused before anything starts.
    for (flag, reason) in [
        (&["--verify"][..], "service's own data"),
        (&["--prefetch-from", "/dev/null"][..], "one per process"),
    ] {
        let refused = Command::new(pagehop_bin())
            .args([
                "send",
                "--pid",
                &source.root.to_string(),
                "--to",
                "127.0.0.1:9",
            ])
            .args(["--criu", "--mode", "hybrid", "--unauthenticated"])
            .args(flag)
            .output()
            .expect("pagehop send");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success());
        assert!(
            stderr.contains(flag[0]) && stderr.contains(reason),
            "{stderr}"
        );
    }
    assert_runs(source.root, "the source");
}

/// CRIU's kernel-feature cache: in place while any pagehop uses it, gone
/// after the last one (on a /run that outlives a reboot, as here), and
/// CRIU's own on a tmpfs /run.
#[test]
#[ignore = "needs root"]
fn criu_s_kernel_cache_is_there_while_pagehop_runs_and_gone_after() {
    use pagehop::criu::{Criu, KdatCache};
    require_root();
    let cache = Path::new("/run/criu.kdat");
    let criu = Criu::find(None).expect("the setup's CRIU");
    let persistent_run = !pagehop::sys::fs::is_tmpfs(Path::new("/run")).unwrap();
    let first = KdatCache::prepare(&criu);
    assert!(cache.exists(), "no cache after prepare");
    let second = KdatCache::prepare(&criu);
    drop(first);
    assert!(cache.exists(), "the cache went while a user was left");
    // CRIU loads it: `criu check` at -v4 says so.
    let out = Command::new(criu.path())
        .args(["check", "-v4", "-o", "/dev/stderr"])
        .output()
        .expect("criu check");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Loaded kdat cache"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(second);
    assert_eq!(
        cache.exists(),
        !persistent_run,
        "a pagehop-installed cache must go with its last user; CRIU's own stays"
    );
}
