//! The file operations: write and read in chunks, stat, list, remove, mkdir.

use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use zygote_guest_proto::agent::{
    DirEntry, Entries, FileKind, FileStat, Request, Response, MAX_FRAME,
};

use crate::conn::send;
use crate::errno;

/// Bytes of a `List` answer's entries: the frame less its status, opcode and `next`.
const MAX_ENTRIES: usize = MAX_FRAME - 16;

/// Carries out a file request and answers it (an error status when the file system refuses).
pub(crate) fn handle(
    conn: &mut impl Write,
    out: &mut Vec<u8>,
    data: &mut Vec<u8>,
    request: &Request<'_>,
) -> io::Result<()> {
    data.clear();
    let response = match execute(request, data) {
        Ok(response) => response,
        Err(error) => Response::Error(errno::code(&error)),
    };
    send(conn, out, &response)
}

fn path(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// The response to `request`; `data` holds the bytes it borrows.
fn execute<'d>(request: &Request<'_>, data: &'d mut Vec<u8>) -> io::Result<Response<'d>> {
    Ok(match *request {
        Request::WriteFile {
            path: file,
            offset,
            truncate,
            mode,
            data: bytes,
        } => {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(truncate)
                .mode(mode)
                .open(path(file))?
                .write_all_at(bytes, offset)?;
            Response::Written
        }
        Request::ReadFile {
            path: file,
            offset,
            len,
        } => {
            read_at(&File::open(path(file))?, offset, len as usize, data)?;
            Response::FileData(data)
        }
        Request::Stat(file) => Response::Stat(stat(&fs::symlink_metadata(path(file))?)),
        Request::List { path: dir, start } => {
            let next = list(path(dir), start, data)?;
            let entries = Entries::new(data).ok_or(io::ErrorKind::InvalidData)?;
            Response::Entries { next, entries }
        }
        Request::Remove {
            path: file,
            recursive,
        } => {
            let file = path(file);
            match (fs::symlink_metadata(file)?.is_dir(), recursive) {
                (true, true) => fs::remove_dir_all(file)?,
                (true, false) => fs::remove_dir(file)?,
                (false, _) => fs::remove_file(file)?,
            }
            Response::Removed
        }
        Request::Mkdir {
            path: dir,
            parents,
            mode,
        } => {
            DirBuilder::new()
                .recursive(parents)
                .mode(mode)
                .create(path(dir))?;
            Response::MadeDir
        }
        _ => return Err(io::ErrorKind::Unsupported.into()),
    })
}

/// Reads up to `len` bytes at `offset` into `data`: fewer only at the end of the file.
fn read_at(file: &File, offset: u64, len: usize, data: &mut Vec<u8>) -> io::Result<()> {
    // Room for what the file holds, not for all a request may ask (a fresh page is a fault).
    let size = file.metadata().map_or(u64::MAX, |m| m.len());
    let len = len.min(usize::try_from(size.saturating_sub(offset)).unwrap_or(usize::MAX));
    data.resize(len, 0);
    let mut got = 0;
    while got < len {
        match file.read_at(&mut data[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    data.truncate(got);
    Ok(())
}

fn kind(metadata: &Metadata) -> FileKind {
    let file_type = metadata.file_type();
    if file_type.is_file() {
        FileKind::File
    } else if file_type.is_dir() {
        FileKind::Dir
    } else if file_type.is_symlink() {
        FileKind::Symlink
    } else {
        FileKind::Other
    }
}

fn stat(metadata: &Metadata) -> FileStat {
    FileStat {
        kind: kind(metadata),
        mode: metadata.mode() & 0o7777,
        size: metadata.size(),
        mtime: metadata.mtime(),
    }
}

/// Packs the entries of `dir` from the `start`th (sorted by name) into `data`, as many as fit;
/// returns the index to ask for next, or 0 when none are left.
fn list(dir: &Path, start: u32, data: &mut Vec<u8>) -> io::Result<u32> {
    let mut names: Vec<_> = fs::read_dir(dir)?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name())
        .collect();
    names.sort();
    let mut scratch = [0u8; 11 + u16::MAX as usize];
    for (index, name) in names.iter().enumerate().skip(start as usize) {
        let (entry_kind, size) = match fs::symlink_metadata(dir.join(name)) {
            Ok(metadata) => (kind(&metadata), metadata.size()),
            // Removed since `read_dir`: list it as what we know.
            Err(_) => (FileKind::Other, 0),
        };
        let entry = DirEntry {
            kind: entry_kind,
            size,
            name: name.as_bytes(),
        };
        let Some(n) = entry.write_to(&mut scratch) else {
            continue;
        };
        if data.len() + n > MAX_ENTRIES {
            return Ok(index as u32);
        }
        data.extend_from_slice(&scratch[..n]);
    }
    Ok(0)
}
