//! A guest that faults is reported as a guest fault, never a host hang or panic.

mod common;

use common::{start, wait_exit};
use zygote::{ExitReason, GuestFault};
use zygote_guest::{ExceptionReport, FaultKind, Workload};

#[test]
fn each_exception_is_reported_with_its_vector() {
    for kind in FaultKind::ALL {
        let Some(vector) = kind.expected_vector() else {
            continue;
        };
        let (mut vm, console) = start(&Workload::Fault(kind));
        let exit = wait_exit(&mut vm, &console);
        assert!(
            matches!(exit, ExitReason::GuestFault(GuestFault::Exception { vector: v }) if v == u32::from(vector)),
            "{kind:?}: {exit:?}\n{}",
            console.text()
        );
        let report = ExceptionReport::find(&console.text()).expect("exception line");
        assert_eq!(report.vector, vector);
    }
}

#[test]
fn a_triple_fault_is_a_guest_fault() {
    let (mut vm, console) = start(&Workload::Fault(FaultKind::TripleFault));
    let exit = wait_exit(&mut vm, &console);
    assert!(
        matches!(exit, ExitReason::GuestFault(GuestFault::TripleFault { .. })),
        "{exit:?}\n{}",
        console.text()
    );
}
