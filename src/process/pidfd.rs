//! Process file descriptors (Linux 5.3+): signal a process without racing against pid reuse,
//! and learn that it has exited by polling.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A pidfd with the pid it was opened for.
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    pid: i32,
}

impl PidFd {
    /// Open a pidfd for `pid`; `Ok(None)` when no such process exists any more.
    pub fn open(pid: i32) -> io::Result<Option<PidFd>> {
        // SAFETY: plain syscall with integer arguments.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ESRCH) => Ok(None),
                _ => Err(e),
            };
        }
        // SAFETY: a fresh descriptor owned by us (pidfds are CLOEXEC by default).
        Ok(Some(PidFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
            pid,
        }))
    }

    /// Wrap a pidfd returned by clone3 (`CLONE_PIDFD`).
    pub fn from_owned(fd: OwnedFd, pid: i32) -> Self {
        PidFd { fd, pid }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Send `sig`; `Ok(false)` when the process has already exited (ESRCH is an outcome).
    pub fn send(&self, sig: i32) -> io::Result<bool> {
        // SAFETY: plain syscall; a null siginfo means "as kill(2) would".
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ESRCH) => Ok(false),
                _ => Err(e),
            };
        }
        Ok(true)
    }

    /// Whether the process has exited. A pidfd becomes readable only once the kernel has
    /// finished `exit_notify`, i.e. after its children were handed to the subreaper.
    pub fn has_exited(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }
}

/// What `PIDFD_GET_INFO` (Linux 6.13+) tells about a process: credentials and cgroup in one
/// ioctl on a pidfd already held, instead of formatting and parsing `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidInfo {
    pub ppid: u32,
    pub ruid: u32,
    pub euid: u32,
    /// Inode number of the process's cgroup2 directory.
    pub cgroup_id: u64,
}

/// `struct pidfd_info`, version 0 (64 bytes).
#[repr(C)]
#[derive(Default)]
struct RawPidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    spare0: u32,
}

const PIDFD_INFO_PID: u64 = 1 << 0;
const PIDFD_INFO_CREDS: u64 = 1 << 1;
const PIDFD_INFO_CGROUPID: u64 = 1 << 2;
/// `_IOWR(PIDFS_IOCTL_MAGIC = 0xFF, 11, struct pidfd_info)`.
const PIDFD_GET_INFO: libc::c_ulong = (3 << 30) | (64 << 16) | (0xFF << 8) | 11;

impl PidFd {
    /// Credentials and cgroup through `PIDFD_GET_INFO`; `None` on kernels without it (before
    /// 6.13) or once the process is gone.
    pub fn info(&self) -> Option<PidInfo> {
        let mut raw = RawPidfdInfo {
            mask: PIDFD_INFO_PID | PIDFD_INFO_CREDS | PIDFD_INFO_CGROUPID,
            ..Default::default()
        };
        // SAFETY: the ioctl fills a struct of exactly the size encoded in its number.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), PIDFD_GET_INFO, &mut raw) };
        if rc != 0 || raw.mask & PIDFD_INFO_CREDS == 0 {
            return None;
        }
        Some(PidInfo {
            ppid: raw.ppid,
            ruid: raw.ruid,
            euid: raw.euid,
            cgroup_id: if raw.mask & PIDFD_INFO_CGROUPID != 0 {
                raw.cgroupid
            } else {
                0
            },
        })
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Send `sig` to `pid` through a pidfd: no signal can reach a recycled pid between our look-up
/// and the send. `Ok(false)` when the process is already gone.
pub fn signal_pid(pid: i32, sig: i32) -> io::Result<bool> {
    match PidFd::open(pid)? {
        Some(p) => p.send(sig),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_of_self_matches_proc_where_the_kernel_has_it() {
        let me = PidFd::open(std::process::id() as i32).unwrap().unwrap();
        // SAFETY: getuid/getppid have no preconditions.
        let (uid, ppid) = unsafe { (libc::getuid(), libc::getppid()) };
        if let Some(i) = me.info() {
            assert_eq!(i.ruid, uid);
            assert_eq!(i.ppid as i32, ppid);
        }
        assert!(!me.has_exited());
        assert!(me.send(0).unwrap());
    }
}
