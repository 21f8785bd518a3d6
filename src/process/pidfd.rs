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
