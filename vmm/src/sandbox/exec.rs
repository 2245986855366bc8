//! Running commands in the guest: [`Command`], the collected [`Output`], and the streaming
//! [`ExecStream`].

use std::time::Duration;

use zygote_guest_proto::agent::{Exec, ExitStatus, OutputStream, Request, Response, Strings};

use super::conn::{Connection, IO_TIMEOUT};
use super::{refused_at, unexpected, Sandbox, SandboxError};

/// SIGKILL.
const SIGKILL: u32 = 9;

/// A command to run in the guest: program and arguments, environment additions, working
/// directory, standard input and a timeout.
#[derive(Debug, Clone, Default)]
pub struct Command {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    stdin: Vec<u8>,
    timeout: Option<Duration>,
}

impl Command {
    /// Runs `program` (looked up in the guest's `PATH` when it has no `/`).
    pub fn new(program: impl Into<String>) -> Self {
        Command {
            argv: vec![program.into()],
            ..Command::default()
        }
    }

    /// `/bin/sh -c <script>`.
    pub fn shell(script: impl Into<String>) -> Self {
        Command::new("/bin/sh").arg("-c").arg(script)
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.argv.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.argv.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable (added to the agent's: `PATH`, `HOME`).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs in `dir` instead of `/`.
    pub fn current_dir(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Gives the program these bytes on its standard input (then end of file; at most about
    /// 1 MiB with the rest of the request). Without this its stdin is `/dev/null`.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = bytes.into();
        self
    }

    /// Kills the program's process group once `timeout` has passed (the default: never).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The packed argv and environment.
    fn packed(&self) -> Result<(Vec<u8>, Vec<u8>), SandboxError> {
        let mut argv = Vec::new();
        for arg in &self.argv {
            push_c_string(&mut argv, arg.as_bytes())?;
        }
        let mut env = Vec::new();
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') {
                return Err(SandboxError::InvalidArgument(
                    "environment key empty or with '='",
                ));
            }
            push_c_string(&mut env, format!("{key}={value}").as_bytes())?;
        }
        Ok((argv, env))
    }

    fn timeout_ms(&self) -> u32 {
        self.timeout.map_or(0, |t| {
            u32::try_from(t.as_millis()).unwrap_or(u32::MAX).max(1)
        })
    }

    fn program(&self) -> &str {
        &self.argv[0]
    }
}

fn push_c_string(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), SandboxError> {
    if bytes.contains(&0) {
        return Err(SandboxError::InvalidArgument("NUL byte in an argument"));
    }
    out.extend_from_slice(bytes);
    out.push(0);
    Ok(())
}

/// What a finished command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
    /// How it ended.
    pub status: ExitStatus,
}

/// One thing a running command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// Bytes on its standard output.
    Stdout(Vec<u8>),
    /// Bytes on its standard error.
    Stderr(Vec<u8>),
    /// It ended (the last event).
    Exited {
        /// How.
        status: ExitStatus,
        /// Whether the agent killed it for running past its timeout.
        timed_out: bool,
    },
}

/// A command running in the guest, its output arriving as [`ExecEvent`]s.
///
/// It holds a connection of its own until the `Exited` event. Dropped before that, the
/// connection closes and the agent kills the program's process group (within 100 ms of
/// noticing). A server meant to outlive the call should put itself in the background, as
/// `busybox httpd` does, and be run with [`Sandbox::exec`].
#[derive(Debug)]
pub struct ExecStream<'s> {
    sandbox: &'s Sandbox,
    conn: Option<Connection>,
    pid: u32,
}

impl Sandbox {
    /// Runs `command` to its end and collects its output.
    ///
    /// # Errors
    /// [`SandboxError::TimedOut`] (with the output so far) when its timeout passed;
    /// [`SandboxError::NotFound`] when the program does not exist; those of [`Sandbox::spawn`].
    pub fn exec(&self, command: &Command) -> Result<Output, SandboxError> {
        let mut stream = self.spawn(command)?;
        let mut output = Output {
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: ExitStatus::Exited(-1),
        };
        loop {
            match stream.next_event()? {
                ExecEvent::Stdout(bytes) => output.stdout.extend_from_slice(&bytes),
                ExecEvent::Stderr(bytes) => output.stderr.extend_from_slice(&bytes),
                ExecEvent::Exited { status, timed_out } => {
                    output.status = status;
                    return match timed_out {
                        true => Err(SandboxError::TimedOut { output }),
                        false => Ok(output),
                    };
                }
            }
        }
    }

    /// Starts `command` and returns once it runs; read its output with
    /// [`ExecStream::next_event`].
    ///
    /// # Errors
    /// [`SandboxError::NotFound`] when the program does not exist;
    /// [`SandboxError::InvalidArgument`] for a NUL byte in an argument;
    /// [`SandboxError::NotAnswering`] when the agent does not answer.
    pub fn spawn(&self, command: &Command) -> Result<ExecStream<'_>, SandboxError> {
        let (argv, env) = command.packed()?;
        let cwd = command.cwd.as_deref().unwrap_or("");
        if cwd.contains('\0') {
            return Err(SandboxError::InvalidArgument("NUL byte in the directory"));
        }
        let exec = Exec {
            argv: Strings::new(&argv).ok_or(SandboxError::InvalidArgument("no program"))?,
            env: Strings::new(&env).ok_or(SandboxError::InvalidArgument("environment"))?,
            cwd: cwd.as_bytes(),
            stdin: &command.stdin,
            timeout_ms: command.timeout_ms(),
        };
        let mut conn = self.take()?;
        // The output may be quiet for as long as the command runs.
        let quiet = command.timeout.map(|t| t + IO_TIMEOUT);
        conn.set_read_timeout(quiet)?;
        let pid = match conn.call(&Request::Exec(exec))? {
            Response::ExecStarted { pid } => pid,
            other => {
                let error = refused_at(command.program(), &other);
                if matches!(other, Response::Error(_)) {
                    conn.set_read_timeout(Some(IO_TIMEOUT))?;
                    self.give_back(conn);
                }
                return Err(error);
            }
        };
        Ok(ExecStream {
            sandbox: self,
            conn: Some(conn),
            pid,
        })
    }
}

impl ExecStream<'_> {
    /// The program's process ID in the guest (it leads its own process group).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The next event; after [`ExecEvent::Exited`] the stream is done and further calls
    /// fail with [`SandboxError::Protocol`].
    pub fn next_event(&mut self) -> Result<ExecEvent, SandboxError> {
        let conn = self
            .conn
            .as_mut()
            .ok_or(SandboxError::Protocol("the command has already exited"))?;
        let event = match conn.receive()? {
            Response::ExecOutput {
                stream: OutputStream::Stdout,
                data,
            } => ExecEvent::Stdout(data.to_vec()),
            Response::ExecOutput {
                stream: OutputStream::Stderr,
                data,
            } => ExecEvent::Stderr(data.to_vec()),
            Response::ExecExited { status, timed_out } => ExecEvent::Exited { status, timed_out },
            other => return Err(unexpected(&other)),
        };
        if matches!(event, ExecEvent::Exited { .. }) {
            if let Some(conn) = self.conn.take() {
                conn.set_read_timeout(Some(IO_TIMEOUT))?;
                self.sandbox.give_back(conn);
            }
        }
        Ok(event)
    }

    /// Sends `signal` (15 is SIGTERM) to the program's process group; its `Exited` event
    /// follows on this stream.
    pub fn signal(&self, signal: u32) -> Result<(), SandboxError> {
        let pid = self.pid;
        self.sandbox.call(
            &Request::Signal { pid, signal },
            |response| match response {
                Response::Signaled => Ok(()),
                other => Err(unexpected(&other)),
            },
        )
    }

    /// Kills the program's process group (SIGKILL).
    pub fn kill(&self) -> Result<(), SandboxError> {
        self.signal(SIGKILL)
    }
}
