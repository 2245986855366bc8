//! How a failed system call becomes a protocol error code.

use std::io;

use zygote_guest_proto::agent::ErrorCode;

/// The error code for `error` (from its errno when it has one).
pub(crate) fn code(error: &io::Error) -> ErrorCode {
    match error.raw_os_error() {
        Some(libc::ENOENT) => ErrorCode::NotFound,
        Some(libc::EACCES | libc::EPERM) => ErrorCode::PermissionDenied,
        Some(libc::EEXIST | libc::ENOTEMPTY) => ErrorCode::AlreadyExists,
        Some(libc::ENOTDIR | libc::EISDIR | libc::EINVAL | libc::ENAMETOOLONG) => {
            ErrorCode::InvalidArgument
        }
        Some(libc::ENOMEM | libc::EAGAIN | libc::EMFILE | libc::ENFILE) => ErrorCode::Busy,
        _ => ErrorCode::IoError,
    }
}
