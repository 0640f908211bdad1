//! A container's cgroup v2 directory as the identity of a process tree
//! (`send --criu --cgroup PATH`): the processes in it (sub-cgroups
//! included), the root of their tree, and any that are in the cgroup but
//! not in the tree (CRIU dumps one tree; a process that entered the
//! cgroup from outside, `docker exec` style, would be left behind).
use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{path} is not a cgroup v2 directory")]
    NotCgroup2 { path: PathBuf },
    #[error("{path} is the root of its cgroup v2 hierarchy: name the container's own cgroup")]
    HierarchyRoot { path: PathBuf },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {path} holds no process")]
    Empty { path: PathBuf },
    #[error(
        "cgroup {path} holds {} process trees (roots {roots:?}); CRIU dumps one tree, so its \
         processes must all descend from one root",
        roots.len()
    )]
    ManyTrees { path: PathBuf, roots: Vec<i32> },
    #[error("--pid {pid} is not the root of the tree in cgroup {path} (its root is {root})")]
    NotRoot { path: PathBuf, pid: i32, root: i32 },
    #[error(
        "cgroup {path} holds processes outside the tree of {root}: {pids:?} (they entered the \
         cgroup from elsewhere; CRIU would leave them behind)"
    )]
    Outside {
        path: PathBuf,
        root: i32,
        pids: Vec<i32>,
    },
}

/// A cgroup v2 directory, checked.
#[derive(Clone, Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// `path`, if it is a cgroup v2 directory below its hierarchy's root.
    pub fn open(path: &Path) -> Result<Cgroup, CgroupError> {
        let read = |source| CgroupError::Read {
            path: path.to_path_buf(),
            source,
        };
        let path = path.canonicalize().map_err(read)?;
        if !pagehop_sys::fs::is_cgroup2(&path).map_err(read)? || !path.is_dir() {
            return Err(CgroupError::NotCgroup2 { path });
        }
        // Every cgroup but the root has `cgroup.events`.
        if !path.join("cgroup.events").exists() {
            return Err(CgroupError::HierarchyRoot { path });
        }
        Ok(Cgroup { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every process in the cgroup and its sub-cgroups, by host pid.
    pub fn processes(&self) -> Result<BTreeSet<i32>, CgroupError> {
        let mut pids = BTreeSet::new();
        let mut dirs = vec![self.path.clone()];
        while let Some(dir) = dirs.pop() {
            let read = |source| CgroupError::Read {
                path: dir.clone(),
                source,
            };
            let procs = fs::read_to_string(dir.join("cgroup.procs")).map_err(read)?;
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            for entry in fs::read_dir(&dir).map_err(read)? {
                let entry = entry.map_err(read)?;
                if entry.file_type().map_err(read)?.is_dir() {
                    dirs.push(entry.path());
                }
            }
        }
        Ok(pids)
    }

    /// The root of the cgroup's process tree: its one process whose parent
    /// is not in the cgroup. `pid`, when given, must be that root.
    pub fn tree_root(&self, pid: Option<i32>) -> Result<i32, CgroupError> {
        let pids = self.processes()?;
        let roots = roots(&pids, |p| pagehop_sys::process::parent_of(p).ok());
        let root = match roots[..] {
            [] => {
                return Err(CgroupError::Empty {
                    path: self.path.clone(),
                });
            }
            [root] => root,
            _ => {
                return Err(CgroupError::ManyTrees {
                    path: self.path.clone(),
                    roots,
                });
            }
        };
        match pid {
            Some(pid) if pid != root => Err(CgroupError::NotRoot {
                path: self.path.clone(),
                pid,
                root,
            }),
            _ => Ok(root),
        }
    }

    /// Fails if the cgroup holds a process that is not in `tree` (host
    /// pids of the tree rooted at `root`).
    pub fn check_only(&self, root: i32, tree: &[i32]) -> Result<(), CgroupError> {
        let outside: Vec<i32> = self
            .processes()?
            .into_iter()
            .filter(|p| !tree.contains(p))
            .collect();
        if outside.is_empty() {
            Ok(())
        } else {
            Err(CgroupError::Outside {
                path: self.path.clone(),
                root,
                pids: outside,
            })
        }
    }
}

/// The members of `pids` whose parent (by `parent`) is not a member; a
/// process that exited meanwhile (no parent) is left out.
fn roots(pids: &BTreeSet<i32>, parent: impl Fn(i32) -> Option<i32>) -> Vec<i32> {
    pids.iter()
        .copied()
        .filter(|&p| parent(p).is_some_and(|pp| !pids.contains(&pp)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_the_member_whose_parent_is_outside() {
        let pids: BTreeSet<i32> = [10, 11, 12, 20].into();
        let parents = |p| match p {
            10 => Some(1),
            11 | 12 => Some(10),
            20 => Some(5),
            _ => None,
        };
        assert_eq!(roots(&pids, parents), vec![10, 20]);
        let one: BTreeSet<i32> = [10, 11, 12].into();
        assert_eq!(roots(&one, parents), vec![10]);
        // 12 exited between the listing and its stat: not a root.
        assert_eq!(
            roots(&one, |p| (p != 12).then(|| parents(p)).flatten()),
            vec![10]
        );
    }

    #[test]
    fn a_directory_outside_cgroupfs_is_refused() {
        assert!(matches!(
            Cgroup::open(Path::new("/proc")),
            Err(CgroupError::NotCgroup2 { .. })
        ));
    }
}
