//! Measuring helpers shared by the benches and the examples that print figures.

/// p-th percentile (nearest rank) of `values`; 0 for none.
pub fn percentile(values: &mut [u64], p: usize) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values.sort_unstable();
    let rank = (p * values.len()).div_ceil(100).max(1);
    values[rank.min(values.len()) - 1]
}

/// `Private_Dirty` of the whole process (`/proc/self/smaps_rollup`), in KiB.
pub fn private_dirty_kib() -> std::io::Result<u64> {
    std::fs::read_to_string("/proc/self/smaps_rollup")?
        .lines()
        .find_map(|line| line.strip_prefix("Private_Dirty:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no Private_Dirty in smaps_rollup"))
}

/// Raises the soft limit on open files to the hard one: each VM holds a few dozen fds, and
/// many children need more than the default soft limit of 1024.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
