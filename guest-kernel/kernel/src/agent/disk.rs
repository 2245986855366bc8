//! Requests on the virtio-blk disk: `DiskWrite`, `DiskRead`, `DiskFlush`, `DiskId`.

use zygote_guest_proto::agent::{ErrorCode, Response, SECTOR_SIZE};

use super::Agent;
use crate::virtio::blk::BlkError;

impl Agent {
    pub(super) fn disk_write(&mut self, sector: u64, data: &[u8]) -> Response<'static> {
        let Agent { devices, clock, .. } = self;
        match devices.blk.as_mut() {
            None => Response::Error(ErrorCode::NoDevice),
            Some(blk) => match blk.write(clock, sector, data) {
                Ok(()) => Response::DiskWritten,
                Err(e) => Response::Error(blk_error(e)),
            },
        }
    }

    /// Reads `count` sectors into the data buffer.
    pub(super) fn disk_read(&mut self, sector: u64, count: u32) -> Response<'_> {
        let Agent {
            devices,
            clock,
            data,
            ..
        } = self;
        let buf = &mut data[..count as usize * SECTOR_SIZE];
        match devices.blk.as_mut() {
            None => Response::Error(ErrorCode::NoDevice),
            Some(blk) => match blk.read(clock, sector, buf) {
                Ok(()) => Response::DiskData(buf),
                Err(e) => Response::Error(blk_error(e)),
            },
        }
    }

    pub(super) fn disk_flush(&mut self) -> Response<'static> {
        let Agent { devices, clock, .. } = self;
        match devices.blk.as_mut().map(|blk| blk.flush(clock)) {
            None => Response::Error(ErrorCode::NoDevice),
            Some(Ok(())) => Response::DiskFlushed,
            Some(Err(e)) => Response::Error(blk_error(e)),
        }
    }

    pub(super) fn disk_id(&mut self) -> Response<'static> {
        let Agent { devices, clock, .. } = self;
        match devices.blk.as_mut().map(|blk| blk.id(clock)) {
            None => Response::Error(ErrorCode::NoDevice),
            Some(Ok(id)) => Response::DiskId(id),
            Some(Err(e)) => Response::Error(blk_error(e)),
        }
    }
}

fn blk_error(error: BlkError) -> ErrorCode {
    match error {
        BlkError::OutOfRange => ErrorCode::OutOfRange,
        BlkError::ReadOnly => ErrorCode::ReadOnly,
        BlkError::Status(_) | BlkError::Device(_) => ErrorCode::DeviceError,
    }
}
