//! Feeding a host source to the guest's UART, on a thread that stops with the VM.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use zygote_devices::legacy::Serial;

use super::quiesce::GateWaiter;
use crate::idle::Doorbell;

/// A source of serial input: anything readable with a file descriptor to wait on.
pub trait SerialSource: Read + AsFd + Send {}

impl<T: Read + AsFd + Send> SerialSource for T {}

/// The pump thread; dropping it stops and joins the thread, even while its source has
/// nothing to read.
pub(crate) struct InputPump {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl InputPump {
    /// Starts pumping `input` into `serial`.
    pub(crate) fn spawn(
        input: Box<dyn SerialSource>,
        serial: Arc<Mutex<Serial>>,
        gate: GateWaiter,
        doorbell: Arc<Doorbell>,
    ) -> io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let stopped = stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("zygote-serial-in".into())
            .spawn(move || pump(input, &serial, &stopped, &gate, &doorbell))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for InputPump {
    fn drop(&mut self) {
        if self.stop.write(1).is_ok() {
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// What waiting on the source, the stop eventfd and the pause gate found.
enum Ready {
    Input,
    Pause,
    Stop,
}

fn wait(input: &dyn SerialSource, stop: &EventFd, gate: &GateWaiter) -> io::Result<Ready> {
    let pollfd = |fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds = [
        pollfd(stop.as_raw_fd()),
        pollfd(gate.event().as_raw_fd()),
        pollfd(input.as_fd().as_raw_fd()),
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd entries for the duration of the call.
        let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if ret >= 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    if fds[0].revents != 0 {
        Ok(Ready::Stop)
    } else if fds[1].revents != 0 {
        Ok(Ready::Pause)
    } else {
        Ok(Ready::Input)
    }
}

/// Whether the pump was told to stop (the stop eventfd is left readable for later checks).
fn stop_requested(stop: &EventFd) -> bool {
    let mut fd = libc::pollfd {
        fd: stop.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `fd` is one valid pollfd for the duration of the call; a zero timeout never blocks.
    unsafe { libc::poll(&mut fd, 1, 0) > 0 }
}

fn pump(
    mut input: Box<dyn SerialSource>,
    serial: &Mutex<Serial>,
    stop: &EventFd,
    gate: &GateWaiter,
    doorbell: &Doorbell,
) {
    let mut buf = [0u8; 256];
    loop {
        match wait(&*input, stop, gate) {
            Ok(Ready::Input) => {}
            Ok(Ready::Pause) => {
                gate.park_if_closed(|| stop_requested(stop));
                continue;
            }
            Ok(Ready::Stop) | Err(_) => return,
        }
        let n = match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        let mut sent = 0;
        while sent < n {
            // Never feed the UART of a paused VM.
            gate.park_if_closed(|| stop_requested(stop));
            let taken = serial
                .lock()
                .map(|mut s| s.enqueue_input(&buf[sent..n]).unwrap_or(0))
                .unwrap_or(0);
            sent += taken;
            if taken > 0 {
                // The guest may be idle, polling nothing; the byte is for it to find.
                doorbell.ring();
            }
            if taken == 0 {
                // The guest has not drained its receive FIFO yet; stop if the VM goes away.
                if stop_requested(stop) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}
