//! cgjob: a Linux job containment supervisor.
//!
//! Each job runs in a cgroup v2 cgroup of its own; its processes are born inside it (clone3
//! `CLONE_INTO_CGROUP`), and when the job ends everything still inside — and every descendant
//! of cgjob that left — is found, reported and killed.
//!
//! Layout: `cgroup` and `process` are mechanism (cgroupfs, spawning, signals, /proc); `job` is
//! policy (supervision, escalation, leftovers, records); `commands` are thin subcommands;
//! `report` prints results, never through the log.

pub mod cgroup;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod job;
pub mod logging;
pub mod process;
pub mod report;

/// What std's runtime start-up would do for `main` and cgjob needs (see `main.rs`): make sure
/// fds 0, 1 and 2 are open, so that no file cgjob opens lands on one of them, and ignore
/// SIGPIPE, so that a closed stderr cannot kill the supervisor.
pub fn startup() {
    for fd in 0..3 {
        // SAFETY: fcntl/open/dup2 on small integers.
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) == -1 {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 && null != fd {
                    libc::dup2(null, fd);
                    libc::close(null);
                }
            }
        }
    }
    process::signals::ignore_sigpipe();
}
