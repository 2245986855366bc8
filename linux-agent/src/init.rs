//! What the agent does as the guest's PID 1: file systems, the loopback interface, a default
//! environment, and reaping orphans.

use std::ffi::CString;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use zygote_linux_agent::Agent;

/// File systems mounted at start: (source, mount point, type).
const MOUNTS: [(&str, &str, &str); 3] = [
    ("proc", "/proc", "proc"),
    ("sysfs", "/sys", "sysfs"),
    ("devtmpfs", "/dev", "devtmpfs"),
];

/// Directories a program may expect.
const DIRS: [&str; 2] = ["/tmp", "/root"];

/// Sets the guest up. Each step that fails is reported on stderr and skipped: the agent still
/// serves what it can.
pub fn pid1(agent: &Arc<Agent>) {
    for (source, target, fstype) in MOUNTS {
        if let Err(error) = mount(source, target, fstype) {
            eprintln!("zygote-linux-agent: mount {target}: {error}");
        }
    }
    for dir in DIRS {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(error) = loopback_up() {
        eprintln!("zygote-linux-agent: lo: {error}");
    }
    // SAFETY: still single-threaded: no other thread reads the environment now.
    unsafe {
        std::env::set_var("PATH", "/bin:/sbin:/usr/bin:/usr/sbin");
        std::env::set_var("HOME", "/root");
    }
    let agent = Arc::clone(agent);
    std::thread::spawn(move || reap(&agent));
}

fn mount(source: &str, target: &str, fstype: &str) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    let (source, target, fstype) = (cstr(source)?, cstr(target)?, cstr(fstype)?);
    // SAFETY: three valid NUL-terminated strings and no data; mount copies what it needs.
    let result = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    match result {
        0 => Ok(()),
        _ => match io::Error::last_os_error() {
            // Mounted already (the kernel's devtmpfs automount, say).
            error if error.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            error => Err(error),
        },
    }
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::ErrorKind::InvalidInput.into())
}

/// `ip link set lo up`: Linux then gives it 127.0.0.1/8 by itself.
fn loopback_up() -> io::Result<()> {
    // SAFETY: socket() has no memory effects.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data for which all zeroes is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: `request` is a valid ifreq naming "lo" for both ioctls, which read and write only
    // it; the union field written is the one SIOCSIFFLAGS reads; `fd` is closed once.
    unsafe {
        let mut ok = libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut request) == 0;
        request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        ok = ok && libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &mut request) == 0;
        let error = io::Error::last_os_error();
        libc::close(fd);
        if ok {
            Ok(())
        } else {
            Err(error)
        }
    }
}

/// Reaps every child that is not a program `Exec` is waiting for: orphans re-parented to PID 1
/// and daemons' intermediate processes.
fn reap(agent: &Agent) {
    loop {
        match next_zombie() {
            Some(pid) => {
                let reaped = agent.children().reap_unless_tracked(pid as u32, || {
                    // SAFETY: waitpid writes nothing when the status pointer is null.
                    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
                });
                if !reaped {
                    // Its `Exec` will reap it in a moment.
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Waits until some child has exited and returns its pid without reaping it (`WNOWAIT`);
/// `None` when there are no children.
fn next_zombie() -> Option<libc::pid_t> {
    // SAFETY: siginfo_t is plain data for which all zeroes is valid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid siginfo_t that waitid fills in.
    let result = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
    if result != 0 {
        return None;
    }
    // SAFETY: for a child's state change, the kernel's siginfo has si_pid as the first field
    // of its union, at byte 16 on x86_64 (after si_signo, si_errno, si_code and padding); the
    // struct is at least 128 bytes.
    let pid = unsafe { (&raw const info).cast::<libc::pid_t>().add(4).read() };
    Some(pid)
}
