//! MECHANISM: starting a process inside a cgroup, pidfds, signals, reaping, and reading /proc.

pub mod pidfd;
pub mod procinfo;
pub mod reap;
pub mod signals;
pub mod spawn;
pub mod terminal;

pub use pidfd::PidFd;

/// Raise RLIMIT_NOFILE's soft limit to the hard one: a pidfd per process of a job (and, in
/// the daemon, a descriptor per job) can take thousands, and the usual soft limit is 1024.
/// Returns the old limit, for a command started afterwards to get back; `None` when nothing
/// changed.
pub fn raise_nofile() -> Option<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer to an rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0
        || lim.rlim_cur >= lim.rlim_max
    {
        return None;
    }
    let old = lim;
    lim.rlim_cur = lim.rlim_max.min(1 << 20);
    // SAFETY: as above.
    (unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0).then_some(old)
}
