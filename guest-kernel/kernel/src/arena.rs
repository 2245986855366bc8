//! A bump allocator over one range of RAM, for memory the drivers and the agent keep for the
//! whole run (virtqueues, DMA buffers, connection buffers). Nothing is ever freed.
//!
//! The range is identity-mapped, so an address it hands out is also the guest-physical address
//! a device is given.

use crate::boot_params::BootParams;

/// Bytes the agent's arena takes (at the top of the RAM entry that holds the kernel).
pub const ARENA_SIZE: u64 = 8 << 20;

/// The kernel's RAM above 1 MiB starts here (`KERNEL_LOAD_ADDR`).
const LOW_RAM: u64 = 0x10_0000;

/// A range of RAM handed out front to back.
pub struct Arena {
    start: u64,
    next: u64,
    end: u64,
}

impl Arena {
    /// The top [`ARENA_SIZE`] bytes of the e820 RAM entry holding the kernel, provided they lie
    /// above `floor` (the end of whatever else must not be overlapped); `None` when RAM is too
    /// small.
    pub fn at_top_of_ram(boot: &BootParams, floor: u64) -> Option<Self> {
        let entry = boot
            .e820()
            .find(|entry| entry.covers(LOW_RAM, LOW_RAM + 1))?;
        let end = entry.addr.checked_add(entry.size)? & !0xfff;
        let start = end.checked_sub(ARENA_SIZE)?;
        (start >= floor).then_some(Arena {
            start,
            next: start,
            end,
        })
    }

    /// First address of the arena (everything below it is free for others).
    pub fn start(&self) -> u64 {
        self.start
    }

    /// `size` zeroed bytes aligned to `align` (a power of two), or `None` when the arena is
    /// exhausted.
    pub fn alloc(&mut self, size: usize, align: usize) -> Option<*mut u8> {
        let ptr = self.alloc_uninit(size, align)?;
        // SAFETY: `ptr..ptr + size` was just carved out of the arena (RAM, identity-mapped,
        // writable, handed out once).
        unsafe { ptr.write_bytes(0, size) };
        Some(ptr)
    }

    /// `len` copies of `value`, for tables too large for the small user stack: a struct holding
    /// them by value would be built and moved on the stack (several copies of it at once in
    /// one frame once inlined). `None` when the arena is exhausted.
    pub fn alloc_slice<T: Copy>(&mut self, len: usize, value: T) -> Option<&'static mut [T]> {
        let size = core::mem::size_of::<T>().checked_mul(len)?;
        let ptr = self
            .alloc_uninit(size, core::mem::align_of::<T>())?
            .cast::<T>();
        for index in 0..len {
            // SAFETY: `ptr..ptr + len` was just carved out of the arena for `len` values of
            // `T`, aligned for `T`; each element is written once before the slice exists.
            unsafe { ptr.add(index).write(value) };
        }
        // SAFETY: every element was initialized above; the memory is handed out once and
        // never freed, so the slice may live for the whole run.
        Some(unsafe { core::slice::from_raw_parts_mut(ptr, len) })
    }

    /// Like [`Arena::alloc`] without zeroing: for byte buffers always written before read.
    pub fn alloc_uninit(&mut self, size: usize, align: usize) -> Option<*mut u8> {
        let align = align as u64;
        let at = self.next.checked_add(align - 1)? & !(align - 1);
        let end = at.checked_add(size as u64)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(at as *mut u8)
    }
}

core::arch::global_asm!(
    // The page holding the agent's counter (link.ld places it at AGENT_COUNTER_ADDR).
    ".section .zg_agent, \"aw\", @nobits",
    ".balign 4096",
    ".global zg_agent_page",
    "zg_agent_page:",
    "    .skip 4096",
);
