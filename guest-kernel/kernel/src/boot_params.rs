//! Reading the zero page (Linux `struct boot_params`) the VMM passes in `rsi`.

use zygote_guest_proto::IDENTITY_MAP_LIMIT;

/// `ext_cmd_line_ptr`: bits 63..32 of the command line's address.
const EXT_CMD_LINE_PTR: u64 = 0x0c8;
/// `e820_entries`: how many entries `e820_table` holds.
const E820_ENTRIES: u64 = 0x1e8;
/// `hdr.cmd_line_ptr`: bits 31..0 of the command line's address.
const CMD_LINE_PTR: u64 = 0x228;
/// `e820_table`: packed 20-byte entries.
const E820_TABLE: u64 = 0x2d0;
/// Room in the zero page for e820 entries.
const E820_MAX_ENTRIES: u8 = 128;
const E820_ENTRY_SIZE: u64 = 20;
/// Size of the zero page.
const ZERO_PAGE_SIZE: u64 = 4096;
/// e820 type of usable RAM.
const E820_RAM: u32 = 1;

/// The zero page, read in place.
#[derive(Clone, Copy)]
pub struct BootParams {
    /// Its physical (= virtual) address, or `None` when the VMM passed none usable.
    base: Option<u64>,
}

/// One e820 entry: a physical range and its type.
#[derive(Clone, Copy)]
pub struct E820Entry {
    /// Start of the range.
    pub addr: u64,
    /// Length of the range in bytes.
    pub size: u64,
    /// Its type; 1 is usable RAM.
    pub kind: u32,
}

impl E820Entry {
    /// Whether `start..end` is usable RAM inside this entry.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        self.kind == E820_RAM && self.addr <= start && end <= self.addr.saturating_add(self.size)
    }
}

impl BootParams {
    /// Reads the zero page at `addr` (as the VMM passed it). An address of 0 or one past the
    /// identity map gives a zero page with no command line and no RAM.
    ///
    /// # Safety
    /// A nonzero `addr` below the identity map limit must point at a readable 4 KiB zero page
    /// that nothing writes while the kernel runs.
    pub unsafe fn new(addr: u64) -> Self {
        let usable = addr != 0 && addr < IDENTITY_MAP_LIMIT - ZERO_PAGE_SIZE;
        BootParams {
            base: usable.then_some(addr),
        }
    }

    /// The command line's physical address, 0 when there is none.
    pub fn cmdline_addr(&self) -> u64 {
        let low: u32 = self.read(CMD_LINE_PTR);
        let high: u32 = self.read(EXT_CMD_LINE_PTR);
        u64::from(high) << 32 | u64::from(low)
    }

    /// The e820 memory map.
    pub fn e820(&self) -> impl Iterator<Item = E820Entry> + '_ {
        let count: u8 = self.read(E820_ENTRIES);
        (0..u64::from(count.min(E820_MAX_ENTRIES))).map(move |index| {
            let entry = E820_TABLE + index * E820_ENTRY_SIZE;
            E820Entry {
                addr: self.read(entry),
                size: self.read(entry + 8),
                kind: self.read(entry + 16),
            }
        })
    }

    /// A field at `offset`, or zero when there is no zero page.
    fn read<T: Copy + Default>(&self, offset: u64) -> T {
        debug_assert!(offset + core::mem::size_of::<T>() as u64 <= ZERO_PAGE_SIZE);
        match self.base {
            // SAFETY: `new`'s caller promised a readable zero page at `base`, and every offset
            // used here lies inside it; the fields are packed, hence the unaligned read.
            Some(base) => unsafe { ((base + offset) as *const T).read_unaligned() },
            None => T::default(),
        }
    }
}
