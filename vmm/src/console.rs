//! Where the guest's serial console goes, and an in-memory buffer that tests can wait on.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The sink for what the guest writes to its serial port.
#[derive(Default)]
pub enum SerialOutput {
    /// Throw the output away.
    #[default]
    Discard,
    /// Keep it in a [`ConsoleBuffer`] the caller holds a clone of.
    Buffer(ConsoleBuffer),
    /// Write it to any writer: a file, stdout, a pipe.
    Writer(Box<dyn Write + Send>),
}

impl SerialOutput {
    /// Appends the output to the file at `path`, creating it if needed.
    pub fn file(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = File::options().create(true).append(true).open(path)?;
        Ok(Self::Writer(Box::new(file)))
    }

    pub(crate) fn into_writer(self) -> Box<dyn Write + Send> {
        match self {
            Self::Discard => Box::new(io::sink()),
            Self::Buffer(buffer) => Box::new(buffer),
            Self::Writer(writer) => writer,
        }
    }
}

/// A growable, shareable buffer of console output with a blocking wait for text.
///
/// Clones share the same contents. An optional echo writer receives a copy of every byte.
#[derive(Clone, Default)]
pub struct ConsoleBuffer {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    grown: Condvar,
}

#[derive(Default)]
struct State {
    bytes: Vec<u8>,
    echo: Option<Box<dyn Write + Send>>,
}

impl ConsoleBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty buffer that also copies everything to `echo` (stdout, say).
    pub fn with_echo(echo: Box<dyn Write + Send>) -> Self {
        let buffer = Self::default();
        buffer.lock().echo = Some(echo);
        buffer
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Everything written so far.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().bytes.clone()
    }

    /// Everything written so far, as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().bytes).into_owned()
    }

    /// Waits until the output contains `needle`, for at most `timeout`. Returns whether it did.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let needle = needle.as_bytes();
        let mut state = self.lock();
        loop {
            if contains(&state.bytes, needle) {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            state = match self.shared.grown.wait_timeout(state, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

impl Write for ConsoleBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.lock();
        state.bytes.extend_from_slice(buf);
        if let Some(echo) = state.echo.as_mut() {
            // Echoing is best effort: a closed stdout must not stop the guest's console.
            let _ = echo.write_all(buf).and_then(|()| echo.flush());
        }
        drop(state);
        self.shared.grown.notify_all();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_sees_text_written_by_another_thread() {
        let buffer = ConsoleBuffer::new();
        let mut writer = buffer.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            writer.write_all(b"booting\nready\n").unwrap();
        });
        assert!(buffer.wait_for("ready", Duration::from_secs(10)));
        t.join().unwrap();
        assert_eq!(buffer.text(), "booting\nready\n");
    }

    #[test]
    fn wait_for_times_out() {
        let buffer = ConsoleBuffer::new();
        assert!(!buffer.wait_for("never", Duration::from_millis(10)));
    }
}
