//! `pstree.img`: the dumped tree, one `pstree_entry` record a process: 1
//! `pid`, 2 `ppid`, 3 `pgid`, 4 `sid` (uint32, required), 5 `threads`
//! (repeated uint32, the leader included). Pids are the tree's own (vpids).
//! CRIU writes the root first (its `ppid` is 0) and every process after its
//! parent; its restore refuses a parent that is not in the tree.
use std::collections::HashSet;

use super::image::records;
use super::protobuf::{FieldId, ProtoError, Reader, numbered, scan};
use super::{CriuImageError, ImageKind, PstreeProblem};

/// One process of the dumped tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PstreeEntry {
    pub pid: u32,
    /// 0 for the root.
    pub ppid: u32,
    /// May name a process outside the tree (`--shell-job`).
    pub pgid: u32,
    /// Likewise.
    pub sid: u32,
    /// Its threads' ids, the leader included.
    pub threads: Vec<u32>,
}

const MSG: &str = "pstree_entry";
const FIELDS: [FieldId; 4] = numbered(MSG, ["pid", "ppid", "pgid", "sid"]);
const THREADS: FieldId = FieldId::new(MSG, "threads", 5);

fn decode_entry(bytes: &[u8]) -> Result<PstreeEntry, ProtoError> {
    let mut threads = Vec::new();
    let [pid, ppid, pgid, sid] = scan(Reader::new(bytes), &FIELDS, |tag, v| match tag {
        5 => v.push_uint32(THREADS, &mut threads),
        _ => Ok(()),
    })?;
    Ok(PstreeEntry {
        pid: pid.uint32()?,
        ppid: ppid.uint32()?,
        pgid: pgid.uint32()?,
        sid: sid.uint32()?,
        threads,
    })
}

fn is_pid(v: u32) -> bool {
    (1..=i32::MAX as u32).contains(&v)
}

fn check_entry(index: usize, e: &PstreeEntry, pids: &HashSet<u32>) -> Result<(), PstreeProblem> {
    if !is_pid(e.pid) {
        return Err(PstreeProblem::NotAPid {
            what: "pid",
            value: e.pid,
        });
    }
    if let Some(&tid) = e.threads.iter().find(|&&t| !is_pid(t)) {
        return Err(PstreeProblem::NotAPid {
            what: "thread id",
            value: tid,
        });
    }
    if index == 0 {
        if e.ppid != 0 {
            return Err(PstreeProblem::RootHasParent { ppid: e.ppid });
        }
    } else if !pids.contains(&e.ppid) {
        return Err(PstreeProblem::UnknownParent { ppid: e.ppid });
    }
    if pids.contains(&e.pid) {
        return Err(PstreeProblem::DuplicatePid);
    }
    Ok(())
}

/// Parses and validates `pstree.img`: at least one entry, the first the
/// root (`ppid` 0), each later one's parent an earlier entry, pids and
/// thread ids from 1 to 2^31-1, pids unique.
pub fn parse_pstree(bytes: &[u8]) -> Result<Vec<PstreeEntry>, CriuImageError> {
    let kind = ImageKind::Pstree;
    let mut entries = Vec::new();
    let mut pids = HashSet::new();
    for record in records(kind, bytes)? {
        let record = record?;
        let e = decode_entry(record.bytes).map_err(|err| record.error(err))?;
        let index = entries.len();
        check_entry(index, &e, &pids).map_err(|problem| CriuImageError::PstreeEntry {
            index,
            pid: e.pid,
            problem,
        })?;
        pids.insert(e.pid);
        entries.push(e);
    }
    if entries.is_empty() {
        return Err(CriuImageError::MissingRecord { kind, what: MSG });
    }
    Ok(entries)
}
