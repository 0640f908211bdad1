//! Finds a `syscall` instruction in the target that the [`Injector`] can
//! point the seized thread at: no code is ever written into the target, so
//! the injector borrows two bytes (`0f 05`) from an executable mapping that
//! is already there.
//!
//! [`Injector`]: super::Injector
use std::fs::File;
use std::os::unix::fs::FileExt;

use super::{InjectError, Result};

/// Most bytes of one executable mapping searched for a `syscall` instruction.
const GADGET_SEARCH_MAX: u64 = 16 << 20;

fn read_proc(path: String) -> Result<String> {
    std::fs::read_to_string(&path).map_err(|source| InjectError::Proc { path, source })
}

/// An executable mapping from /proc/PID/maps.
struct ExecMapping {
    start: u64,
    end: u64,
    path: String,
}

/// Finds a `syscall` instruction (0f 05) in an executable mapping of `pid`:
/// `[vdso]` first, then libc, then any other. Executing it from there runs
/// exactly one syscall; the thread is stopped at the syscall-exit stop before
/// whatever follows the two bytes could run.
pub(super) fn find_syscall_insn(pid: i32, tid: i32, mem: &File) -> Result<u64> {
    let path = format!("/proc/{pid}/task/{tid}/maps");
    let maps = read_proc(path)?;
    let mut mappings: Vec<ExecMapping> = maps
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (start, end) = f.next()?.split_once('-')?;
            let perms = f.next()?;
            let path = f.nth(3).unwrap_or("").to_string();
            // [vsyscall] is emulated: jumping into the middle of it faults.
            if !perms.starts_with("r-x") || path == "[vsyscall]" {
                return None;
            }
            Some(ExecMapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                path,
            })
        })
        .collect();
    let rank = |m: &ExecMapping| match m.path.as_str() {
        "[vdso]" => 0,
        p if p
            .rsplit('/')
            .next()
            .is_some_and(|name| name.starts_with("libc.so") || name.starts_with("libc-")) =>
        {
            1
        }
        _ => 2,
    };
    mappings.sort_by_key(rank);
    let mut chunk = vec![0u8; 64 * 1024];
    for m in &mappings {
        let end = m.end.min(m.start.saturating_add(GADGET_SEARCH_MAX));
        let mut addr = m.start;
        while addr < end {
            let len = chunk.len().min((end - addr) as usize);
            let Ok(n) = mem.read_at(&mut chunk[..len], addr) else {
                break;
            };
            if n == 0 {
                break;
            }
            if let Some(i) = chunk[..n].windows(2).position(|w| w == [0x0f, 0x05]) {
                return Ok(addr + i as u64);
            }
            // Overlap one byte so a pair split across chunks is found.
            addr += if n > 1 { n as u64 - 1 } else { 1 };
        }
    }
    Err(InjectError::NoSyscallInstruction { pid })
}
