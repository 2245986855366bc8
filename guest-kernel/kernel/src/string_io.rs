//! The `string-io` workload: COM1 read and written with string port instructions, each one
//! `rep` over a whole buffer (see `zygote_guest_proto::StringIoReport`).

use zygote_guest_proto::{
    exit_code, StringIoReport, COM1_PORT, INSB_LEN, INSD_COUNT, INSW_COUNT, STRING_IO_OUT_LINES,
};

use crate::arch::port::{self, RepIns, RepOuts};
use crate::exit::exit;
use crate::println;

/// COM1's line status register and its data-ready bit.
const LSR: u16 = COM1_PORT + 5;
const LSR_DATA_READY: u8 = 1;

/// Reads the host's input with `rep ins`, reports it, writes the out lines with `rep outs`.
pub fn run() -> ! {
    // The host queues all of its input at once, so the first byte means all of it is there.
    loop {
        // SAFETY: COM1's registers touch no memory.
        let status = unsafe { port::inb(LSR) };
        if status & LSR_DATA_READY != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    let mut report = StringIoReport {
        insb: [0; INSB_LEN],
        insw: [0; INSW_COUNT],
        insd: [0; INSD_COUNT],
    };
    // SAFETY: COM1's registers touch no memory; each buffer is a local array.
    unsafe {
        u8::rep_ins(COM1_PORT, &mut report.insb);
        u16::rep_ins(COM1_PORT, &mut report.insw);
        u32::rep_ins(COM1_PORT, &mut report.insd);
    }
    println!("{report}");
    let [bytes, words, dwords] = STRING_IO_OUT_LINES;
    let (words, word_count) = elements::<u16>(words);
    let (dwords, dword_count) = elements::<u32>(dwords);
    // SAFETY: COM1's registers touch no memory; every buffer is a local array or a static
    // string.
    unsafe {
        u8::rep_outs(COM1_PORT, bytes.as_bytes());
        u16::rep_outs(COM1_PORT, &words[..word_count]);
        u32::rep_outs(COM1_PORT, &dwords[..dword_count]);
    }
    exit(exit_code::OK)
}

/// The longest out line, in characters.
const MAX_LINE: usize = 64;

/// `line`'s characters zero-extended to elements of `T`, and how many there are (at most
/// [`MAX_LINE`]).
fn elements<T: From<u8> + Copy + Default>(line: &str) -> ([T; MAX_LINE], usize) {
    let mut out = [T::default(); MAX_LINE];
    for (element, &byte) in out.iter_mut().zip(line.as_bytes()) {
        *element = T::from(byte);
    }
    (out, line.len().min(MAX_LINE))
}
