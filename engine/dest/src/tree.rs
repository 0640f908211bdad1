//! The restored process and every process below it: found in /proc (by
//! parent pid) and signalled through pidfds, so that a signal never reaches a
//! process that took a pid over.
use pagehop_sys::process::{Process, descendants};

/// Sends `sig` to `root` and each of its descendants; returns the handles
/// of those it reached (to signal them again, e.g. SIGCONT after SIGSTOP).
/// The tree is scanned again after each pass, until a pass finds nobody
/// new, so that a child forked while the signals went out is reached too
/// (a stopped or killed process forks no more).
pub fn signal_tree(root: &Process, sig: i32) -> Vec<Process> {
    const PASSES: usize = 8;
    let mut reached: Vec<Process> = Vec::new();
    for _ in 0..PASSES {
        let mut new = 0;
        for pid in descendants(root.pid()) {
            if reached.iter().any(|p| p.pid() == pid) {
                continue;
            }
            let handle = if pid == root.pid() {
                root.try_clone()
            } else {
                Process::open(pid)
            };
            if let Ok(p) = handle
                && p.signal(sig).is_ok()
            {
                reached.push(p);
                new += 1;
            }
        }
        if new == 0 {
            break;
        }
    }
    reached
}

#[cfg(test)]
mod tests {
    use pagehop_sys::process::descendants;

    #[test]
    fn finds_this_process_and_its_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let tree = descendants(std::process::id() as i32);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(tree[0], std::process::id() as i32);
        assert!(tree.contains(&(child.id() as i32)), "{tree:?}");
    }
}
