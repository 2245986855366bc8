//! A bounded byte queue between the UART (on a vCPU thread) and a host writer (on its own
//! thread), so a slow or stuck writer never blocks the guest.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most bytes waiting for the writer; beyond this, output is dropped.
pub const CAPACITY: usize = 1 << 20;
/// How long dropping a VM waits for its writer to finish the queue.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    changed: Condvar,
    dropped: AtomicU64,
}

#[derive(Default)]
struct QueueState {
    bytes: VecDeque<u8>,
    closed: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The UART's end: never blocks.
pub(crate) struct QueuedWriter {
    queue: Arc<Queue>,
}

/// The writer thread; dropping it closes the queue and waits briefly for the writer.
pub(crate) struct OutputDrain {
    queue: Arc<Queue>,
    thread: Option<JoinHandle<()>>,
}

impl QueuedWriter {
    /// A queue drained into `writer` by a new thread.
    pub(crate) fn spawn(writer: Box<dyn Write + Send>) -> io::Result<(Self, OutputDrain)> {
        let queue = Arc::new(Queue::default());
        let drained = queue.clone();
        let thread = std::thread::Builder::new()
            .name("zygote-console".into())
            .spawn(move || drain(&drained, writer))?;
        let drain = OutputDrain {
            queue: queue.clone(),
            thread: Some(thread),
        };
        Ok((Self { queue }, drain))
    }
}

impl Write for QueuedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.queue.lock();
        let room = CAPACITY.saturating_sub(state.bytes.len());
        let taken = buf.len().min(room);
        state.bytes.extend(&buf[..taken]);
        drop(state);
        if taken < buf.len() {
            let lost = (buf.len() - taken) as u64;
            self.queue.dropped.fetch_add(lost, Ordering::Relaxed);
        }
        self.queue.changed.notify_all();
        // The UART's byte is consumed either way: a full queue loses it, like a real serial
        // line with nobody listening.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn drain(queue: &Queue, mut writer: Box<dyn Write + Send>) {
    loop {
        let (chunk, closed) = {
            let mut state = queue.lock();
            while state.bytes.is_empty() && !state.closed {
                state = match queue.changed.wait(state) {
                    Ok(guard) => guard,
                    Err(poisoned) => poisoned.into_inner(),
                };
            }
            let chunk: Vec<u8> = state.bytes.drain(..).collect();
            (chunk, state.closed)
        };
        if !chunk.is_empty()
            && writer
                .write_all(&chunk)
                .and_then(|()| writer.flush())
                .is_err()
        {
            // A broken writer (closed pipe, full disk) loses the console; the guest goes on.
            queue
                .dropped
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
        if closed && queue.lock().bytes.is_empty() {
            return;
        }
    }
}

impl OutputDrain {
    /// Bytes the guest wrote that never reached the writer.
    pub(crate) fn dropped(&self) -> u64 {
        self.queue.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for OutputDrain {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.changed.notify_all();
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        // A writer stuck for good keeps its thread; the VM does not wait for it.
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A writer that blocks until told to go on, then records what it got.
    struct Gated {
        gate: mpsc::Receiver<()>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gated {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.gate.recv();
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_writer_never_blocks_the_uart_and_overflow_is_counted() {
        let (open, gate) = mpsc::channel();
        let out = Arc::new(Mutex::new(Vec::new()));
        let writer = Gated {
            gate,
            out: out.clone(),
        };
        let (mut queued, drain) = QueuedWriter::spawn(Box::new(writer)).unwrap();
        // The writer is blocked on its first chunk; the UART keeps writing regardless.
        let start = Instant::now();
        for _ in 0..(CAPACITY / 1024 + 64) * 2 {
            queued.write_all(&[b'x'; 1024]).unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(drain.dropped() > 0, "overflow is counted");
        for _ in 0..1000 {
            let _ = open.send(());
        }
        drop(drain);
        assert!(!out.lock().unwrap().is_empty());
    }
}
