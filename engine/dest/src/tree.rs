//! The restored process and every process below it: found in /proc (by
//! parent pid) and signalled through pidfds, so that a signal never reaches a
//! process that took a pid over.
use pagehop_sys::process::{Process, descendants};

/// Sends `sig` to `root` and each of its descendants; returns the handles
/// of those it reached (to signal them again, e.g. SIGCONT after SIGSTOP).
pub fn signal_tree(root: &Process, sig: i32) -> Vec<Process> {
    let mut reached = Vec::new();
    for pid in descendants(root.pid()) {
        let handle = if pid == root.pid() {
            root.try_clone()
        } else {
            Process::open(pid)
        };
        if let Ok(p) = handle
            && p.signal(sig).is_ok()
        {
            reached.push(p);
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
