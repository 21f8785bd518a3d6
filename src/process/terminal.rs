//! The controlling terminal, for job control: who owns the foreground, handing it over.
//! SIGTTOU is blocked in cgjob, so these calls work from a background process group.

use std::os::fd::RawFd;

/// Stdin, when it is the controlling terminal of cgjob's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terminal {
    fd: RawFd,
}

impl Terminal {
    /// The terminal cgjob may do job control on: stdin, if it is a terminal and the
    /// controlling terminal of cgjob's session (cgjob may be in the background of it now and
    /// brought to the foreground later).
    pub fn of_session() -> Option<Terminal> {
        // SAFETY: plain syscalls on fd 0.
        unsafe {
            (libc::isatty(0) == 1 && libc::tcgetsid(0) == libc::getsid(0))
                .then_some(Terminal { fd: 0 })
        }
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// The process group in the foreground.
    pub fn foreground(&self) -> i32 {
        // SAFETY: plain syscall.
        unsafe { libc::tcgetpgrp(self.fd) }
    }

    /// Whether cgjob's own process group is in the foreground.
    pub fn ours_in_front(&self) -> bool {
        // SAFETY: plain syscall.
        self.foreground() == unsafe { libc::getpgrp() }
    }

    /// Put `pgid` in the foreground.
    pub fn give_to(&self, pgid: i32) {
        // SAFETY: plain syscall.
        unsafe { libc::tcsetpgrp(self.fd, pgid) };
    }

    /// If `pgid` is in the foreground, put cgjob's group there instead. Never takes the
    /// terminal from anyone else (the shell, after `bg`).
    pub fn take_back_from(&self, pgid: i32) {
        if self.foreground() == pgid {
            // SAFETY: plain syscall.
            self.give_to(unsafe { libc::getpgrp() });
        }
    }
}
