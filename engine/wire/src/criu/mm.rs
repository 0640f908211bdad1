//! `mm-N.img`: task N's address space, one `mm_entry` record: 1-11 `mm_*`
//! uint64 and 12 `exe_file_id` uint32 (required), 13 `mm_saved_auxv`,
//! 14 `vmas` (repeated `vma_entry`), 15-17 (not read).
//!
//! `vma_entry`: 1 `start`, 2 `end`, 3 `pgoff`, 4 `shmid` (uint64), 5 `prot`,
//! 6 `flags` (mmap's MAP_* bits), 7 `status` (CRIU's VMA_AREA_* bits) (uint32),
//! 8 `fd` (sint64, unused, -1), all required; 9 `madv` uint64 and
//! 10 `fdflags` uint32, optional.
//!
//! CRIU 4.2 appends fake VMAs with [`vma_status::GUARD`] for MADV_GUARD_INSTALL
//! ranges, out of address order and overlapping real VMAs: they are dropped
//! (and counted). The real ones must be sorted and disjoint, as CRIU's
//! lazy-pages code assumes.
use super::image::records;
use super::pagemap::PAGE_SIZE;
use super::protobuf::{FieldId, ProtoError, Reader, numbered, scan, skip};
use super::{CriuImageError, ImageKind, VmaProblem};

/// The mmap flags ([`Vma::flags`]) that [`Vma::can_be_lazy`] looks at
/// (0x02, 0x20, 0x2000, 0x40000).
pub mod map {
    pub const PRIVATE: u32 = 1 << 1;
    pub const ANONYMOUS: u32 = 1 << 5;
    pub const LOCKED: u32 = 1 << 13;
    pub const HUGETLB: u32 = 1 << 18;
}

/// CRIU's VMA status bits ([`Vma::status`]) that this module looks at.
pub mod vma_status {
    pub const VSYSCALL: u32 = 1 << 2;
    pub const VDSO: u32 = 1 << 3;
    pub const VVAR: u32 = 1 << 12;
    /// A fake VMA for a MADV_GUARD_INSTALL range (CRIU 4.2).
    pub const GUARD: u32 = 1 << 16;
}

/// One VMA of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub pgoff: u64,
    pub shmid: u64,
    pub prot: u32,
    /// mmap's MAP_* bits.
    pub flags: u32,
    /// CRIU's VMA_AREA_* bits.
    pub status: u32,
    pub fd: i64,
    /// Bitmap of madvise advice numbers.
    pub madv: Option<u64>,
    pub fdflags: Option<u32>,
}

impl Vma {
    /// Whether `criu restore --lazy-pages` registers this VMA with the
    /// task's userfaultfd (CRIU's `vma_entry_can_be_lazy`): private
    /// anonymous, neither locked nor hugetlb, not the vDSO, vvar or
    /// vsyscall page. The whole VMA is registered, lazy pages or not.
    pub fn can_be_lazy(&self) -> bool {
        let anon_private = map::ANONYMOUS | map::PRIVATE;
        self.flags & anon_private == anon_private
            && self.flags & (map::LOCKED | map::HUGETLB) == 0
            && self.status & (vma_status::VDSO | vma_status::VVAR | vma_status::VSYSCALL) == 0
    }

    /// Whether `addr` is in `[start, end)`.
    pub fn contains(&self, addr: u64) -> bool {
        (self.start..self.end).contains(&addr)
    }
}

/// A task's address space, validated: VMAs page-aligned, non-empty, sorted
/// and disjoint, guard entries dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmEntry {
    pub vmas: Vec<Vma>,
    /// How many [`vma_status::GUARD`] entries were dropped.
    pub guards: usize,
}

impl MmEntry {
    /// The VMA holding `addr`, if any.
    pub fn vma_at(&self, addr: u64) -> Option<&Vma> {
        let i = self.vmas.partition_point(|v| v.end <= addr);
        self.vmas.get(i).filter(|v| v.contains(addr))
    }
}

const MM: &str = "mm_entry";
/// mm_entry's required scalars, all uint64 but `exe_file_id`.
#[rustfmt::skip]
const MM_FIELDS: [FieldId; 12] = numbered(MM, [
    "mm_start_code", "mm_end_code", "mm_start_data", "mm_end_data", "mm_start_stack",
    "mm_start_brk", "mm_brk", "mm_arg_start", "mm_arg_end", "mm_env_start", "mm_env_end",
    "exe_file_id",
]);
const VMAS: FieldId = FieldId::new(MM, "vmas", 14);
const VMA: &str = "vma_entry";
#[rustfmt::skip]
const VMA_FIELDS: [FieldId; 10] = numbered(VMA, [
    "start", "end", "pgoff", "shmid", "prot", "flags", "status", "fd", "madv", "fdflags",
]);

fn decode_vma(r: Reader<'_>) -> Result<Vma, ProtoError> {
    let [
        start,
        end,
        pgoff,
        shmid,
        prot,
        flags,
        status,
        fd,
        madv,
        fdflags,
    ] = scan(r, &VMA_FIELDS, skip)?;
    Ok(Vma {
        start: start.uint64()?,
        end: end.uint64()?,
        pgoff: pgoff.uint64()?,
        shmid: shmid.uint64()?,
        prot: prot.uint32()?,
        flags: flags.uint32()?,
        status: status.uint32()?,
        fd: fd.sint64()?,
        madv: madv.opt_uint64()?,
        fdflags: fdflags.opt_uint32()?,
    })
}

/// All VMAs of the record, guards included, in image order.
fn decode_mm(bytes: &[u8]) -> Result<Vec<Vma>, ProtoError> {
    let mut vmas = Vec::new();
    let fields = scan(Reader::new(bytes), &MM_FIELDS, |tag, v| {
        if tag != VMAS.tag {
            return Ok(());
        }
        if vmas.len() >= super::MAX_REPEATED {
            return Err(ProtoError::TooManyElements { field: VMAS });
        }
        let vma = v
            .message(VMAS)
            .and_then(decode_vma)
            .map_err(|e| ProtoError::Element {
                field: VMAS,
                index: vmas.len(),
                source: Box::new(e),
            })?;
        vmas.push(vma);
        Ok(())
    })?;
    // Required, not used: checked for presence and type.
    let [addresses @ .., exe_file_id] = fields;
    for f in addresses {
        f.uint64()?;
    }
    exe_file_id.uint32()?;
    Ok(vmas)
}

fn check_vma(v: &Vma, prev_end: u64) -> Result<(), VmaProblem> {
    if v.start >= v.end {
        Err(VmaProblem::Empty)
    } else if !v.start.is_multiple_of(PAGE_SIZE) || !v.end.is_multiple_of(PAGE_SIZE) {
        Err(VmaProblem::Unaligned)
    } else if v.start < prev_end {
        Err(VmaProblem::Order { prev_end })
    } else {
        Ok(())
    }
}

/// Parses and validates `mm-N.img` (exactly one record).
pub fn parse_mm(bytes: &[u8]) -> Result<MmEntry, CriuImageError> {
    let record = records(ImageKind::Mm, bytes)?.single(MM)?;
    let all = decode_mm(record.bytes).map_err(|e| record.error(e))?;
    let mut vmas: Vec<Vma> = Vec::with_capacity(all.len());
    let mut guards = 0;
    for (index, v) in all.into_iter().enumerate() {
        if v.status & vma_status::GUARD != 0 {
            guards += 1;
            continue;
        }
        let prev_end = vmas.last().map_or(0, |p| p.end);
        check_vma(&v, prev_end).map_err(|problem| CriuImageError::Vma {
            index,
            start: v.start,
            end: v.end,
            problem,
        })?;
        vmas.push(v);
    }
    Ok(MmEntry { vmas, guards })
}
