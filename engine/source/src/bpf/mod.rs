//! Loads pagehop's eBPF programs, attaches them, and drains what they report.
//!
//! The object is built from `ebpf/pagehop-ebpf` by `build.rs` and embedded
//! here. Before attaching, the tracepoint field offsets the programs rely on
//! are checked against tracefs ([`tracefs`]). Programs and maps are owned by
//! [`Probes`]: when it is dropped (or pagehop dies) the kernel detaches them.
mod tracefs;

use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{RawTracePoint, TracePoint};
use aya::{Ebpf, EbpfError};
use pagehop_common::{FaultEvent, MmEvent, TRACKED_ON, names, stats};

pub use tracefs::TracefsError;

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("loading the eBPF object (needs root or CAP_BPF + CAP_PERFMON)")]
    Load(#[source] Box<EbpfError>),
    #[error("eBPF object has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("eBPF program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("eBPF map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
}

/// Kernel-side counters (summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeStats {
    pub faults_seen: u64,
    pub faults_dropped: u64,
    pub mm_dropped: u64,
}

/// The attached programs and their maps.
pub struct Probes {
    _ebpf: Ebpf,
    tracked: HashMap<MapData, u32, u32>,
    faults: RingBuf<MapData>,
    mm_events: RingBuf<MapData>,
    stats: PerCpuArray<MapData, u64>,
}

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pagehop"));

fn program_err(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> BpfError {
    move |e| BpfError::Program {
        name,
        source: Box::new(e),
    }
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> BpfError {
    move |e| BpfError::Map {
        name,
        source: Box::new(e),
    }
}

impl Probes {
    /// Loads the object and attaches the event programs, and the write-fault
    /// programs when `with_faults` is set.
    pub fn load(with_faults: bool) -> Result<Self, BpfError> {
        tracefs::ensure_mounted()?;
        tracefs::check_offsets()?;
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| BpfError::Load(Box::new(e)))?;
        for (prog, category, event) in [
            (names::PROG_FAULT_USER, "exceptions", "page_fault_user"),
            (names::PROG_FAULT_KERNEL, "exceptions", "page_fault_kernel"),
            (names::PROG_NEWTASK, "task", "task_newtask"),
            (names::PROG_EXEC, "sched", "sched_process_exec"),
            (names::PROG_EXIT, "sched", "sched_process_exit"),
        ] {
            if !with_faults && (prog == names::PROG_FAULT_USER || prog == names::PROG_FAULT_KERNEL)
            {
                continue;
            }
            let tp: &mut TracePoint = ebpf
                .program_mut(prog)
                .ok_or(BpfError::Missing {
                    kind: "program",
                    name: prog,
                })?
                .try_into()
                .map_err(program_err(prog))?;
            tp.load().map_err(program_err(prog))?;
            tp.attach(category, event).map_err(program_err(prog))?;
        }
        let raw: &mut RawTracePoint = ebpf
            .program_mut(names::PROG_SYS_EXIT)
            .ok_or(BpfError::Missing {
                kind: "program",
                name: names::PROG_SYS_EXIT,
            })?
            .try_into()
            .map_err(program_err(names::PROG_SYS_EXIT))?;
        raw.load().map_err(program_err(names::PROG_SYS_EXIT))?;
        raw.attach("sys_exit")
            .map_err(program_err(names::PROG_SYS_EXIT))?;

        let mut take = |name: &'static str| {
            ebpf.take_map(name)
                .ok_or(BpfError::Missing { kind: "map", name })
        };
        let tracked = HashMap::try_from(take(names::TRACKED)?).map_err(map_err(names::TRACKED))?;
        let faults = RingBuf::try_from(take(names::FAULTS)?).map_err(map_err(names::FAULTS))?;
        let mm_events =
            RingBuf::try_from(take(names::MM_EVENTS)?).map_err(map_err(names::MM_EVENTS))?;
        let stats = PerCpuArray::try_from(take(names::STATS)?).map_err(map_err(names::STATS))?;
        Ok(Self {
            _ebpf: ebpf,
            tracked,
            faults,
            mm_events,
            stats,
        })
    }

    /// Starts recording the faults and events of thread group `tgid`.
    pub fn track(&mut self, tgid: u32) -> Result<(), BpfError> {
        self.tracked
            .insert(tgid, TRACKED_ON, 0)
            .map_err(map_err(names::TRACKED))
    }

    pub fn untrack(&mut self, tgid: u32) {
        // Already gone when the process exited (the exit program removes it).
        let _ = self.tracked.remove(&tgid);
    }

    /// Calls `f` for every queued write fault; returns how many there were.
    pub fn drain_faults(&mut self, mut f: impl FnMut(FaultEvent)) -> usize {
        drain(&mut self.faults, |e: FaultEvent| f(e))
    }

    /// Calls `f` for every queued address-space or process event.
    pub fn drain_mm_events(&mut self, mut f: impl FnMut(MmEvent)) -> usize {
        drain(&mut self.mm_events, |e: MmEvent| f(e))
    }

    pub fn stats(&self) -> ProbeStats {
        let sum = |index: u32| -> u64 {
            self.stats
                .get(&index, 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0)
        };
        ProbeStats {
            faults_seen: sum(stats::FAULTS_SEEN),
            faults_dropped: sum(stats::FAULTS_DROPPED),
            mm_dropped: sum(stats::MM_DROPPED),
        }
    }
}

fn drain<T: Copy>(ring: &mut RingBuf<MapData>, mut f: impl FnMut(T)) -> usize {
    let mut n = 0;
    while let Some(item) = ring.next() {
        if item.len() >= size_of::<T>() {
            // SAFETY: the record was written by the eBPF program as a `T`
            // (both sides use the repr(C) type from pagehop-common), the
            // length was checked, and read_unaligned has no alignment need.
            let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) };
            f(event);
            n += 1;
        }
    }
    n
}
