//! String port I/O through a real guest: `rep ins`/`rep outs` of bytes, words and dwords on
//! COM1 move every element, exactly as single `in`s and `out`s would.

mod common;

use std::io::Write;

use common::{builder, start_with, wait_exit};
use zygote_guest::proto::{StringIoReport, STRING_IO_INPUT, STRING_IO_OUT_LINES};
use zygote_guest::{Workload, READY_LINE};

#[test]
fn rep_ins_from_com1_reads_every_byte_and_rep_outs_writes_every_element() {
    let (mut host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
    // All of it before the VM starts: the guest's first data-ready means all of it is queued.
    host.write_all(STRING_IO_INPUT).unwrap();
    let (mut vm, console) = start_with(builder(&Workload::StringIo).serial_input(guest));
    let exit = wait_exit(&mut vm, &console);
    let text = console.text();
    assert_eq!(exit.exit_code(), Some(0), "{exit:?}\n{text}");
    let report = format!("{}\n", StringIoReport::expected());
    assert!(text.contains(&report), "expected {report:?} in:\n{text}");
    for line in STRING_IO_OUT_LINES {
        assert!(text.contains(line), "expected {line:?} in:\n{text}");
    }
    // Nothing else reached the console: no stray or missing element.
    let expected = [READY_LINE, &report, &STRING_IO_OUT_LINES.concat()].concat();
    assert_eq!(text, expected);
}
