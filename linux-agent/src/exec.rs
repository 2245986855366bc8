//! `Exec` and `Signal`: start a program in its own process group, stream its output while it
//! runs, enforce its timeout, report how it ended.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use zygote_guest_proto::agent::{ErrorCode, Exec, ExitStatus, OutputStream, Response};

use crate::conn::send;
use crate::errno;

/// Most output bytes one `ExecOutput` frame carries.
const OUTPUT_CHUNK: usize = 64 * 1024;

/// Bytes written to a program's stdin per wake-up: `PIPE_BUF`, which a pipe that polls
/// writable always takes without blocking.
const STDIN_CHUNK: usize = 4096;

/// How often a program whose outputs stay open (a background child holds them) is checked
/// for having exited.
const EXIT_CHECK: Duration = Duration::from_millis(100);

/// The programs `Exec` started and has not waited for yet.
///
/// As PID 1 the agent also reaps orphans; it must not reap one of these, or the connection
/// that started it would lose its exit status. Spawning and the reaper's check-and-reap both
/// hold the lock, so a program that exits at once is never taken for an orphan.
#[derive(Debug, Default)]
pub struct Children {
    pids: Mutex<HashSet<u32>>,
}

impl Children {
    fn lock(&self) -> MutexGuard<'_, HashSet<u32>> {
        self.pids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn spawn(&self, command: &mut Command) -> io::Result<Child> {
        let mut pids = self.lock();
        let child = command.spawn()?;
        pids.insert(child.id());
        Ok(child)
    }

    fn forget(&self, pid: u32) {
        self.lock().remove(&pid);
    }

    /// Runs `reap` with the lock held unless `pid` is one of the tracked programs; returns
    /// whether it ran.
    pub fn reap_unless_tracked(&self, pid: u32, reap: impl FnOnce()) -> bool {
        let pids = self.lock();
        if pids.contains(&pid) {
            return false;
        }
        reap();
        true
    }

    /// Sends `signal` to the process group of tracked program `pid`.
    pub(crate) fn signal(&self, pid: u32, signal: u32) -> Response<'static> {
        let pids = self.lock();
        let (Some(&pid), Ok(signal)) = (pids.get(&pid), i32::try_from(signal)) else {
            return Response::Error(ErrorCode::NotFound);
        };
        match kill_group(pid, signal) {
            Ok(()) => Response::Signaled,
            Err(error) => Response::Error(errno::code(&error)),
        }
    }
}

/// `kill(-pid, signal)`: the whole process group the program leads.
fn kill_group(pid: u32, signal: i32) -> io::Result<()> {
    let group = i32::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill has no memory effects; `-group` names only the program's own process group
    // (group > 1: a spawned program is never PID 0 or 1).
    match unsafe { libc::kill(-group, signal) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Runs `request` and streams its events; only a failure to talk to the host is an `Err`.
pub(crate) fn run(
    children: &Children,
    conn: &mut (impl Write + AsRawFd),
    out: &mut Vec<u8>,
    buf: &mut Vec<u8>,
    request: &Exec<'_>,
) -> io::Result<()> {
    let mut command = match build(request) {
        Ok(command) => command,
        Err(code) => return send(conn, out, &Response::Error(code)),
    };
    let mut child = match children.spawn(&mut command) {
        Ok(child) => child,
        Err(error) => return send(conn, out, &Response::Error(errno::code(&error))),
    };
    let pid = child.id();
    buf.resize(buf.len().max(OUTPUT_CHUNK), 0);
    let result = Running::new(&mut child, request, buf).stream(conn, out);
    if result.is_err() {
        // The host is gone: nobody will read the output.
        let _ = kill_group(pid, libc::SIGKILL);
        let _ = child.wait();
    }
    children.forget(pid);
    result
}

/// The command for `request`, or why it cannot be one.
fn build(request: &Exec<'_>) -> Result<Command, ErrorCode> {
    let mut argv = request.argv.iter();
    let program = argv.next().ok_or(ErrorCode::InvalidArgument)?;
    let mut command = Command::new(OsStr::from_bytes(program));
    command.args(argv.map(OsStr::from_bytes));
    for entry in request.env.iter() {
        let at = entry
            .iter()
            .position(|&b| b == b'=')
            .ok_or(ErrorCode::InvalidArgument)?;
        command.env(
            OsStr::from_bytes(&entry[..at]),
            OsStr::from_bytes(&entry[at + 1..]),
        );
    }
    if !request.cwd.is_empty() {
        command.current_dir(OsStr::from_bytes(request.cwd));
    }
    let stdin = match request.stdin.is_empty() {
        true => Stdio::null(),
        false => Stdio::piped(),
    };
    command
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    Ok(command)
}

/// A started program and what is left to move.
struct Running<'c, 'r, 'b> {
    child: &'c mut Child,
    stdin: Option<ChildStdin>,
    stdin_left: &'r [u8],
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    deadline: Option<Instant>,
    timed_out: bool,
    buf: &'b mut [u8],
}

impl<'c, 'r, 'b> Running<'c, 'r, 'b> {
    fn new(child: &'c mut Child, request: &Exec<'r>, buf: &'b mut [u8]) -> Self {
        let deadline = (request.timeout_ms > 0)
            .then(|| Instant::now() + Duration::from_millis(u64::from(request.timeout_ms)));
        Running {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            child,
            stdin_left: request.stdin,
            deadline,
            timed_out: false,
            buf,
        }
    }

    /// `ExecStarted`, the output while it comes, `ExecExited`.
    fn stream(mut self, conn: &mut (impl Write + AsRawFd), out: &mut Vec<u8>) -> io::Result<()> {
        send(
            conn,
            out,
            &Response::ExecStarted {
                pid: self.child.id(),
            },
        )?;
        let mut status = None;
        while self.stdout.is_some() || self.stderr.is_some() {
            if self.poll_once(conn, out)? {
                continue;
            }
            // Nothing happened for a while: the deadline, or a program that exited while
            // something it started still holds its outputs.
            if self.deadline_passed() {
                self.kill();
            } else if let Some(done) = self.child.try_wait()? {
                self.drain(conn, out)?;
                status = Some(done);
                break;
            }
        }
        let status = match status {
            Some(status) => status,
            None => self.wait()?,
        };
        let status = match status.signal() {
            Some(signal) => ExitStatus::Signaled(signal as u32),
            None => ExitStatus::Exited(status.code().unwrap_or(-1)),
        };
        send(
            conn,
            out,
            &Response::ExecExited {
                status,
                timed_out: self.timed_out,
            },
        )
    }

    fn deadline_passed(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    fn kill(&mut self) {
        if !self.timed_out {
            self.timed_out = true;
            let _ = kill_group(self.child.id(), libc::SIGKILL);
        }
    }

    /// Waits up to [`EXIT_CHECK`] (or the deadline) for the pipes and serves what is ready;
    /// false when nothing was.
    ///
    /// The host sends nothing while its command runs: the connection becoming readable means
    /// it hung up (or broke the protocol), and the command is abandoned (`Err`, so `run`
    /// kills it).
    fn poll_once(
        &mut self,
        conn: &mut (impl Write + AsRawFd),
        out: &mut Vec<u8>,
    ) -> io::Result<bool> {
        let fds = [
            self.stdin.as_ref().map(AsRawFd::as_raw_fd),
            self.stdout.as_ref().map(AsRawFd::as_raw_fd),
            self.stderr.as_ref().map(AsRawFd::as_raw_fd),
            Some(conn.as_raw_fd()),
        ];
        let events = [
            libc::POLLOUT,
            libc::POLLIN,
            libc::POLLIN,
            libc::POLLIN | libc::POLLRDHUP,
        ];
        let mut wait = EXIT_CHECK;
        if let Some(deadline) = self.deadline.filter(|_| !self.timed_out) {
            wait = wait.min(deadline.saturating_duration_since(Instant::now()));
        }
        let ready = poll(fds, events, wait)?;
        if ready[3] {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the host hung up while the command ran",
            ));
        }
        if ready[0] {
            self.feed_stdin();
        }
        if ready[1] {
            let done = forward(&mut self.stdout, self.buf, OutputStream::Stdout, conn, out)?;
            if done {
                self.stdout = None;
            }
        }
        if ready[2] {
            let done = forward(&mut self.stderr, self.buf, OutputStream::Stderr, conn, out)?;
            if done {
                self.stderr = None;
            }
        }
        Ok(ready.iter().any(|&r| r))
    }

    /// Writes the next piece of stdin; closes it when all is written or the program stopped
    /// reading.
    fn feed_stdin(&mut self) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        let n = self.stdin_left.len().min(STDIN_CHUNK);
        match stdin.write(&self.stdin_left[..n]) {
            Ok(written) => self.stdin_left = &self.stdin_left[written..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => self.stdin_left = &[],
        }
        if self.stdin_left.is_empty() {
            self.stdin = None;
        }
    }

    /// Forwards what the exited program left in its pipes, without waiting for their ends
    /// (something it started may hold them open).
    fn drain(&mut self, conn: &mut impl Write, out: &mut Vec<u8>) -> io::Result<()> {
        if let Some(pipe) = self.stdout.as_mut() {
            drain_pipe(pipe, self.buf, OutputStream::Stdout, conn, out)?;
        }
        if let Some(pipe) = self.stderr.as_mut() {
            drain_pipe(pipe, self.buf, OutputStream::Stderr, conn, out)?;
        }
        Ok(())
    }

    /// Waits for the program once its outputs are closed, still enforcing the deadline.
    fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        let mut pause = Duration::from_millis(1);
        loop {
            if self.deadline.is_none() || self.timed_out {
                return self.child.wait();
            }
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if self.deadline_passed() {
                self.kill();
                continue;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

/// Reads once from `pipe` and sends what came; true at its end.
fn forward(
    pipe: &mut Option<impl Read>,
    buf: &mut [u8],
    stream: OutputStream,
    conn: &mut impl Write,
    out: &mut Vec<u8>,
) -> io::Result<bool> {
    let Some(reader) = pipe.as_mut() else {
        return Ok(true);
    };
    match reader.read(buf) {
        Ok(0) => Ok(true),
        Ok(n) => send(
            conn,
            out,
            &Response::ExecOutput {
                stream,
                data: &buf[..n],
            },
        )
        .map(|()| false),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
        Err(_) => Ok(true),
    }
}

/// Sends everything `pipe` holds right now.
fn drain_pipe(
    pipe: &mut (impl Read + AsRawFd),
    buf: &mut [u8],
    stream: OutputStream,
    conn: &mut impl Write,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    set_nonblocking(pipe.as_raw_fd())?;
    loop {
        match pipe.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => send(
                conn,
                out,
                &Response::ExecOutput {
                    stream,
                    data: &buf[..n],
                },
            )?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Ok(()),
        }
    }
}

/// `poll(2)` on optional fds (`None` is skipped): which were ready (or hung up).
fn poll<const N: usize>(
    fds: [Option<RawFd>; N],
    events: [i16; N],
    wait: Duration,
) -> io::Result<[bool; N]> {
    let mut pollfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; N];
    for (slot, (fd, events)) in pollfds.iter_mut().zip(fds.iter().zip(events)) {
        if let Some(fd) = fd {
            slot.fd = *fd;
            slot.events = events;
        }
    }
    let timeout = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `pollfds` is a live array of N pollfd structs; poll writes only their revents.
    let n = unsafe { libc::poll(pollfds.as_mut_ptr(), N as libc::nfds_t, timeout) };
    if n < 0 {
        let error = io::Error::last_os_error();
        return match error.kind() {
            io::ErrorKind::Interrupted => Ok([false; N]),
            _ => Err(error),
        };
    }
    Ok(pollfds.map(|p| p.fd >= 0 && p.revents != 0))
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on an fd this process owns (a pipe held by `Running`) have no
    // memory effects.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    match ok {
        true => Ok(()),
        false => Err(io::Error::last_os_error()),
    }
}
