//! An in-memory buffer of console output that tests and host programs can wait on.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// A growable, shareable buffer of console output with a blocking wait for text.
///
/// Clones share the same contents. Writing never blocks: an optional echo writer receives a
/// copy of every byte from a thread of its own, so a slow echo (a stalled stdout pipe) never
/// holds up the guest's vCPU.
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
}

impl ConsoleBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty buffer that also copies everything to `echo` (stdout, say), from a thread
    /// that ends once every clone of the buffer is dropped.
    pub fn with_echo(echo: Box<dyn Write + Send>) -> Self {
        let buffer = Self::default();
        let shared = Arc::downgrade(&buffer.shared);
        // Without a thread there is simply no echo; the buffer itself works the same.
        let _ = std::thread::Builder::new()
            .name("zygote-console-echo".into())
            .spawn(move || echo_loop(&shared, echo));
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
    ///
    /// Each wake-up searches only the bytes that arrived since the last search.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let needle = needle.as_bytes();
        let mut searched: usize = 0;
        let mut state = self.lock();
        loop {
            // A match may straddle what was searched and what is new.
            let from = searched.saturating_sub(needle.len().saturating_sub(1));
            if contains(&state.bytes[from..], needle) {
                return true;
            }
            searched = state.bytes.len();
            let left = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) => left,
                    None => return false,
                },
                None => Duration::from_secs(1),
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

/// Copies what arrives in the buffer to `echo`, outside the buffer's lock, until the buffer
/// is gone (and everything in it was echoed).
fn echo_loop(shared: &Weak<Shared>, mut echo: Box<dyn Write + Send>) {
    let mut echoed = 0;
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let fresh = {
            let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.bytes.len() == echoed {
                state = match shared.grown.wait_timeout(state, Duration::from_millis(100)) {
                    Ok((guard, _)) => guard,
                    Err(poisoned) => poisoned.into_inner().0,
                };
            }
            state.bytes[echoed..].to_vec()
        };
        drop(shared);
        echoed += fresh.len();
        if !fresh.is_empty() {
            // Echoing is best effort: a closed stdout must not stop the console.
            let _ = echo.write_all(&fresh).and_then(|()| echo.flush());
        }
    }
}

impl Write for ConsoleBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.lock().bytes.extend_from_slice(buf);
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
    fn wait_for_finds_text_split_across_writes() {
        let buffer = ConsoleBuffer::new();
        let mut writer = buffer.clone();
        writer.write_all(b"zygote-gu").unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            writer.write_all(b"est: ready\n").unwrap();
        });
        assert!(buffer.wait_for("zygote-guest: ready", Duration::MAX));
        t.join().unwrap();
    }

    #[test]
    fn wait_for_times_out() {
        let buffer = ConsoleBuffer::new();
        assert!(!buffer.wait_for("never", Duration::from_millis(10)));
    }
}
