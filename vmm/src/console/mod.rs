//! Where the guest's serial console goes. Nothing here blocks a vCPU: the UART writes into a
//! [`ConsoleBuffer`] or a bounded queue, and host writers run on threads of their own.

mod buffer;
mod queue;

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

pub use buffer::ConsoleBuffer;
pub(crate) use queue::{OutputDrain, QueuedWriter};

/// The sink for what the guest writes to its serial port.
#[derive(Default)]
pub enum SerialOutput {
    /// Throw the output away.
    #[default]
    Discard,
    /// Keep it in a [`ConsoleBuffer`] the caller holds a clone of.
    Buffer(ConsoleBuffer),
    /// Write it to any writer: a file, stdout, a pipe. The writer runs on its own thread
    /// behind a bounded queue; if it falls more than [`queue::CAPACITY`] bytes behind, newer
    /// output is dropped rather than stalling the guest.
    Writer(Box<dyn Write + Send>),
}

impl SerialOutput {
    /// Appends the output to the file at `path`, creating it if needed.
    pub fn file(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = File::options().create(true).append(true).open(path)?;
        Ok(Self::Writer(Box::new(file)))
    }

    /// The writer the UART gets, and the drain thread behind it if there is one.
    pub(crate) fn into_writer(self) -> io::Result<(Box<dyn Write + Send>, Option<OutputDrain>)> {
        Ok(match self {
            Self::Discard => (Box::new(io::sink()), None),
            Self::Buffer(buffer) => (Box::new(buffer), None),
            Self::Writer(writer) => {
                let (queued, drain) = QueuedWriter::spawn(writer)?;
                (Box::new(queued), Some(drain))
            }
        })
    }
}
