//! pagehop's kernel-side programs.
//!
//! * `page_fault_user` / `page_fault_kernel` (tracepoints `exceptions:*`): every
//!   write fault of a tracked thread group goes into the `FAULTS` ring buffer
//!   without a wakeup; userspace drains it once per interval.
//! * `sys_exit` (raw tracepoint): successful mmap, munmap, mremap, brk, madvise
//!   and mprotect calls of tracked processes go into `MM_EVENTS`, with the
//!   arguments read back from the saved user registers.
//! * `task_newtask`, `sched_process_exec`, `sched_process_exit`: a tracked
//!   process's children become tracked before they can run; exec and exit are
//!   reported.
//!
//! Entry points are thin wrappers: all logic returns `Result` and an error
//! only ever means "event not recorded", which is counted in `STATS`.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{RawTracePointContext, TracePointContext},
};
use pagehop_common::{
    CLONE_THREAD, FAULT_ERROR_WRITE, FAULT_FLAG_KERNEL, FaultEvent, MmEvent, MmEventKind,
    TRACKED_ON, USER_ADDRESS_LIMIT, stats, tp_offsets,
};

/// Tracked thread groups (tgid → TRACKED_ON).
#[map(name = "TRACKED")]
static TRACKED: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// Write faults: 4 MiB holds about 170k events, i.e. 0.7 GB of distinct dirty
/// pages per interval before anything is dropped.
#[map(name = "FAULTS")]
static FAULTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Address-space and process events.
#[map(name = "MM_EVENTS")]
static MM_EVENTS: RingBuf = RingBuf::with_byte_size(256 << 10, 0);

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

/// `BPF_RB_NO_WAKEUP`: userspace polls the fault ring on its own schedule.
const RB_NO_WAKEUP: u64 = 1;

fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

fn is_tracked(tgid: u32) -> bool {
    TRACKED.get_ptr(tgid).is_some()
}

fn count(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: the pointer comes from the map and is valid for this CPU's
        // slot; per-CPU slots are never accessed concurrently.
        unsafe { *slot += 1 };
    }
}

#[tracepoint]
pub fn page_fault_user(ctx: TracePointContext) -> u32 {
    record_write_fault(&ctx, 0);
    0
}

#[tracepoint]
pub fn page_fault_kernel(ctx: TracePointContext) -> u32 {
    record_write_fault(&ctx, FAULT_FLAG_KERNEL);
    0
}

fn record_write_fault(ctx: &TracePointContext, flags: u32) {
    let tgid = current_tgid();
    if !is_tracked(tgid) {
        return;
    }
    // SAFETY: offsets are those of the exceptions:page_fault_* format, checked
    // by userspace against tracefs before the program is attached.
    let error_code: u64 = match unsafe { ctx.read_at(tp_offsets::FAULT_ERROR_CODE) } {
        Ok(v) => v,
        Err(_) => return,
    };
    if error_code & FAULT_ERROR_WRITE == 0 {
        return;
    }
    // SAFETY: as above.
    let addr: u64 = match unsafe { ctx.read_at(tp_offsets::FAULT_ADDRESS) } {
        Ok(v) => v,
        Err(_) => return,
    };
    if addr >= USER_ADDRESS_LIMIT {
        return;
    }
    count(stats::FAULTS_SEEN);
    match FAULTS.reserve::<FaultEvent>(0) {
        Some(mut entry) => {
            entry.write(FaultEvent { tgid, flags, addr });
            entry.submit(RB_NO_WAKEUP);
        }
        None => count(stats::FAULTS_DROPPED),
    }
}

fn emit(kind: MmEventKind, tgid: u32, addr: u64, len: u64, arg0: u64, arg1: u64) {
    match MM_EVENTS.reserve::<MmEvent>(0) {
        Some(mut entry) => {
            entry.write(MmEvent {
                kind: kind as u32,
                tgid,
                addr,
                len,
                arg0,
                arg1,
            });
            entry.submit(0);
        }
        None => count(stats::MM_DROPPED),
    }
}

/// Byte offsets in x86_64 `struct pt_regs` (arch/x86/include/asm/ptrace.h).
mod regs {
    pub const R10: usize = 7 * 8;
    pub const DX: usize = 12 * 8;
    pub const SI: usize = 13 * 8;
    pub const DI: usize = 14 * 8;
    pub const ORIG_AX: usize = 15 * 8;
}

mod nr {
    pub const MMAP: u64 = 9;
    pub const MPROTECT: u64 = 10;
    pub const MUNMAP: u64 = 11;
    pub const BRK: u64 = 12;
    pub const MREMAP: u64 = 25;
    pub const MADVISE: u64 = 28;
}

fn read_reg(regs: u64, offset: usize) -> Result<u64, i32> {
    // SAFETY: `regs` is the `struct pt_regs *` argument of sys_exit; the read
    // goes through bpf_probe_read_kernel, which fails safely on a bad address.
    unsafe { bpf_probe_read_kernel((regs as usize + offset) as *const u64) }
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> u32 {
    let _ = try_sys_exit(&ctx);
    0
}

fn try_sys_exit(ctx: &RawTracePointContext) -> Result<(), i32> {
    let tgid = current_tgid();
    if !is_tracked(tgid) {
        return Ok(());
    }
    let regs: u64 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    if (-4095..0).contains(&ret) {
        return Ok(()); // failed call: nothing changed
    }
    let syscall = read_reg(regs, regs::ORIG_AX)?;
    let di = read_reg(regs, regs::DI)?;
    let si = read_reg(regs, regs::SI)?;
    match syscall {
        nr::MMAP => {
            let prot = read_reg(regs, regs::DX)?;
            let flags = read_reg(regs, regs::R10)?;
            emit(MmEventKind::Mmap, tgid, ret as u64, si, prot, flags);
        }
        nr::MUNMAP => emit(MmEventKind::Munmap, tgid, di, si, 0, 0),
        nr::MREMAP => {
            let new_len = read_reg(regs, regs::DX)?;
            emit(MmEventKind::Mremap, tgid, di, si, ret as u64, new_len);
        }
        nr::BRK => emit(MmEventKind::Brk, tgid, ret as u64, 0, di, 0),
        nr::MADVISE => {
            let advice = read_reg(regs, regs::DX)?;
            emit(MmEventKind::Madvise, tgid, di, si, advice, 0);
        }
        nr::MPROTECT => {
            let prot = read_reg(regs, regs::DX)?;
            emit(MmEventKind::Mprotect, tgid, di, si, prot, 0);
        }
        _ => {}
    }
    Ok(())
}

#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let _ = try_task_newtask(&ctx);
    0
}

fn try_task_newtask(ctx: &TracePointContext) -> Result<(), i32> {
    let parent = current_tgid();
    if !is_tracked(parent) {
        return Ok(());
    }
    // SAFETY: offsets of the task:task_newtask format, checked by userspace.
    let clone_flags: u64 = unsafe { ctx.read_at(tp_offsets::NEWTASK_CLONE_FLAGS) }?;
    if clone_flags & CLONE_THREAD != 0 {
        return Ok(()); // a new thread of a tracked process is tracked already
    }
    // SAFETY: as above.
    let child: i32 = unsafe { ctx.read_at(tp_offsets::NEWTASK_PID) }?;
    let child = child as u32;
    // Track the child before it can run, so that none of its faults is missed.
    TRACKED.insert(child, TRACKED_ON, 0)?;
    emit(MmEventKind::Fork, parent, 0, 0, child as u64, 0);
    Ok(())
}

#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let tgid = current_tgid();
    if is_tracked(tgid) {
        emit(MmEventKind::Exec, tgid, 0, 0, 0, 0);
    }
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let tgid = current_tgid();
    if !is_tracked(tgid) {
        return 0;
    }
    // SAFETY: offset of the sched:sched_process_exit format, checked by userspace.
    let group_dead: u8 = unsafe { ctx.read_at(tp_offsets::EXIT_GROUP_DEAD) }.unwrap_or(0);
    if group_dead != 0 {
        let _ = TRACKED.remove(tgid);
        emit(MmEventKind::Exit, tgid, 0, 0, 0, 0);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
