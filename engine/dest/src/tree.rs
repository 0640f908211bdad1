//! The restored process and every process below it: found in /proc (by
//! parent pid) and signalled through pidfds, so that a signal never reaches a
//! process that took a pid over.
use pagehop_sys::process::Process;

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

/// `pid` and every process below it, from /proc.
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut parents: Vec<(i32, i32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may hold anything, so split after its last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse::<i32>().ok());
            if let Some(ppid) = ppid {
                parents.push((p, ppid));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;

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
