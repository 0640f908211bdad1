//! The registered buffer pool: one anonymous mapping, cut into page-aligned
//! buffers. The pool only owns memory; who may touch which buffer is tracked
//! by the sender's slots (see the module docs of `crate::uring`).
use std::mem::ManuallyDrop;
use std::ptr::NonNull;

use io_uring::IoUring;
use memmap2::MmapMut;

use super::UringError;

/// `count` buffers of `size` bytes, each starting on a page boundary.
pub struct BufferPool {
    /// Never accessed through a reference after construction: all access goes
    /// through `base`, so that handing out one buffer never creates a Rust
    /// reference over bytes the kernel is reading for another.
    map: ManuallyDrop<MmapMut>,
    base: NonNull<u8>,
    count: usize,
    size: usize,
    stride: usize,
    /// Set when the kernel may still use the memory: then dropping the pool
    /// leaks the mapping instead of unmapping it.
    leak: bool,
}

// SAFETY: the pool exclusively owns its mapping (the raw `base` pointer points
// into it and is never shared outside `&self`/`&mut self` borrows), so moving
// it to another thread is as safe as moving the `MmapMut` itself.
unsafe impl Send for BufferPool {}

impl BufferPool {
    /// Most fixed buffers one ring accepts (`IORING_MAX_REG_BUFFERS`), further
    /// limited to what a `u16` buffer index can name.
    pub const MAX_BUFFERS: usize = 1 << 14;
    /// Largest registered buffer the kernel accepts (1 GiB).
    pub const MAX_SIZE: usize = 1 << 30;

    /// Maps `count` buffers of `size` bytes. Each buffer starts on a page
    /// boundary (`size` is rounded up to whole pages for the spacing only).
    pub fn new(count: usize, size: usize) -> Result<Self, UringError> {
        let shape = |reason| UringError::PoolShape {
            count,
            size,
            reason,
        };
        if count == 0 || count > Self::MAX_BUFFERS {
            return Err(shape("count must be 1..=16384"));
        }
        if size == 0 || size > Self::MAX_SIZE {
            return Err(shape("size must be 1 byte ..= 1 GiB"));
        }
        let page = pagehop_sys::page_size();
        let stride = size.div_ceil(page) * page;
        let len = stride
            .checked_mul(count)
            .ok_or_else(|| shape("total size overflows"))?;
        let mut map = MmapMut::map_anon(len).map_err(|source| UringError::Map { len, source })?;
        let base = NonNull::new(map.as_mut_ptr()).expect("mmap returned a null mapping");
        Ok(Self {
            map: ManuallyDrop::new(map),
            base,
            count,
            size,
            stride,
            leak: false,
        })
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Usable bytes per buffer.
    pub fn buffer_size(&self) -> usize {
        self.size
    }

    /// The start of buffer `index`; valid for `buffer_size()` bytes while the
    /// pool lives.
    pub(super) fn ptr(&self, index: usize) -> *mut u8 {
        assert!(index < self.count, "buffer {index} of {}", self.count);
        // SAFETY: index < count, so the offset index * stride stays inside the
        // mapping of count * stride bytes.
        unsafe { self.base.as_ptr().add(index * self.stride) }
    }

    /// Buffer `index` for reading.
    ///
    /// The caller (the sender) must only ask for a buffer no in-flight
    /// operation is using; the pool cannot check that itself.
    pub(super) fn buffer(&self, index: usize) -> &[u8] {
        let ptr = self.ptr(index);
        // SAFETY: `ptr` starts a `size`-byte range inside the mapping, which
        // lives as long as `self`. Buffers do not overlap, and the sender only
        // calls this for a buffer in the Held state, which no kernel operation
        // references, so nothing writes these bytes while the slice lives.
        unsafe { std::slice::from_raw_parts(ptr, self.size) }
    }

    /// Buffer `index` for writing; the same rule as [`Self::buffer`].
    pub(super) fn buffer_mut(&mut self, index: usize) -> &mut [u8] {
        let ptr = self.ptr(index);
        // SAFETY: as in `buffer`; in addition `&mut self` guarantees no other
        // slice of this pool handed out by us is alive, and the buffer is
        // Held, so the kernel does not read it concurrently either.
        unsafe { std::slice::from_raw_parts_mut(ptr, self.size) }
    }

    /// Registers every buffer with `ring` as fixed buffer `index`.
    ///
    /// The pool must outlive the ring's use of the buffers: the sender drops
    /// the ring before the pool, and leaks the pool if operations may still
    /// be running.
    pub(super) fn register(&self, ring: &IoUring) -> Result<(), UringError> {
        let iovecs: Vec<libc::iovec> = (0..self.count)
            .map(|i| libc::iovec {
                iov_base: self.ptr(i).cast(),
                iov_len: self.size,
            })
            .collect();
        // SAFETY: every iovec describes a distinct `size`-byte range inside
        // our mapping. The mapping stays mapped until the pool is dropped,
        // which happens after the ring (field order in `UringSender`) or never
        // (`leak`), so the registered ranges stay valid while registered.
        unsafe { ring.submitter().register_buffers(&iovecs) }.map_err(|source| {
            UringError::Register {
                count: self.count,
                size: self.size,
                source,
            }
        })
    }

    /// Keeps the mapping alive forever: called when operations on it could
    /// not be collected.
    pub(super) fn leak(&mut self) {
        self.leak = true;
    }
}

impl Drop for BufferPool {
    fn drop(&mut self) {
        if !self.leak {
            // SAFETY: `map` is dropped exactly once, here, and nothing uses
            // `base` afterwards (the pool is going away).
            unsafe { ManuallyDrop::drop(&mut self.map) };
        }
    }
}

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferPool")
            .field("count", &self.count)
            .field("size", &self.size)
            .field("stride", &self.stride)
            .finish()
    }
}
