//! The restored tree on this host. `criu restore` writes the root's host
//! pid to its pidfile; every other task is found below the root, in the
//! root's pid namespace, by its pid there (the innermost `NSpid`), which is
//! the name CRIU's images and its lazy-pages messages use. Each is held by
//! a pidfd from then on.
use pagehop_sys::process::{Process, descendants};
use pagehop_wire::criu::DumpedTree;

#[derive(Debug, thiserror::Error)]
pub enum HostTreeError {
    #[error("the restored root (pid {pid} on this host) is gone")]
    RootGone {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the restored root (pid {pid} on this host) is pid {got} in its namespace, the dump's root is {want}"
    )]
    RootMismatch { pid: i32, got: i32, want: u32 },
    #[error("task {vpid} of the dump was not found below the restored root")]
    Missing { vpid: u32 },
}

/// One restored task: its pid in the tree's namespace, and the process.
#[derive(Debug)]
pub struct RestoredTask {
    pub vpid: u32,
    pub process: Process,
}

/// Finds every live task of `tree` below the host process `root`.
pub fn host_tasks(root: i32, tree: &DumpedTree) -> Result<Vec<RestoredTask>, HostTreeError> {
    let root_process =
        Process::open(root).map_err(|source| HostTreeError::RootGone { pid: root, source })?;
    let namespace = root_process
        .pid_namespace_inode()
        .map_err(|source| HostTreeError::RootGone { pid: root, source })?;
    let want_root = tree.tasks.first().map_or(0, |t| t.vpid);
    let root_vpid = innermost(&root_process).unwrap_or(0);
    if root_vpid as u32 != want_root {
        return Err(HostTreeError::RootMismatch {
            pid: root,
            got: root_vpid,
            want: want_root,
        });
    }
    let mut found: Vec<RestoredTask> = vec![RestoredTask {
        vpid: want_root,
        process: root_process,
    }];
    for pid in descendants(root).into_iter().skip(1) {
        let Ok(process) = Process::open(pid) else {
            continue;
        };
        if process.pid_namespace_inode().ok() != Some(namespace) {
            continue;
        }
        let Some(vpid) = innermost(&process).and_then(|v| u32::try_from(v).ok()) else {
            continue;
        };
        if tree.live_tasks().any(|t| t.vpid == vpid) && !found.iter().any(|t| t.vpid == vpid) {
            found.push(RestoredTask { vpid, process });
        }
    }
    for task in tree.live_tasks() {
        if !found.iter().any(|t| t.vpid == task.vpid) {
            return Err(HostTreeError::Missing { vpid: task.vpid });
        }
    }
    Ok(found)
}

fn innermost(process: &Process) -> Option<i32> {
    process.ns_pid().ok()?.last().copied()
}
