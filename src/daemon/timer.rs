//! A one-shot monotonic timer the daemon's epoll loop can wait on (timerfd): armed for the
//! next thing due (a job's time limit, the next policing sweep), disarmed when nothing is.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Timer {
    fd: OwnedFd,
    /// When it is armed for.
    at: Option<Instant>,
}

impl Timer {
    pub fn new() -> io::Result<Timer> {
        // SAFETY: timerfd_create with flags; the fd is owned right away.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor of ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Timer { fd, at: None })
    }

    /// Fire at `at` (at once if it is past); `None` disarms. Re-arming for the same time is
    /// free.
    pub fn set(&mut self, at: Option<Instant>) -> io::Result<()> {
        if at == self.at {
            return Ok(());
        }
        let value = match at {
            // A zero it_value disarms: a due time in the past fires after 1 ns.
            Some(t) => t
                .saturating_duration_since(Instant::now())
                .max(Duration::from_nanos(1)),
            None => Duration::ZERO,
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: value.as_secs() as libc::time_t,
                tv_nsec: value.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: a valid itimerspec; relative time on our timerfd.
        if unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) }
            != 0
        {
            return Err(io::Error::last_os_error());
        }
        self.at = at;
        Ok(())
    }

    /// After it fired: consume the expiry (so that level-triggered epoll stops reporting it).
    pub fn clear(&mut self) {
        let mut n = 0u64;
        // SAFETY: an 8-byte read into a u64, on a non-blocking fd.
        unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut n as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        self.at = None;
    }
}

impl AsFd for Timer {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(t: &Timer, ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd: t.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd.
        unsafe { libc::poll(&mut p, 1, ms) == 1 }
    }

    #[test]
    fn fires_once_when_due_and_not_when_disarmed() {
        let mut t = Timer::new().unwrap();
        t.set(Some(Instant::now() + Duration::from_millis(20)))
            .unwrap();
        assert!(!readable(&t, 0));
        assert!(readable(&t, 2000));
        t.clear();
        assert!(!readable(&t, 50), "one-shot");
        // A time in the past fires at once.
        t.set(Some(Instant::now() - Duration::from_secs(1)))
            .unwrap();
        assert!(readable(&t, 2000));
        t.clear();
        t.set(Some(Instant::now() + Duration::from_millis(20)))
            .unwrap();
        t.set(None).unwrap();
        assert!(!readable(&t, 100), "disarmed");
    }
}
