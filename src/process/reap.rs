//! Reaping children: cgjob is a child subreaper, so every orphan of the job becomes its child
//! and must be waited for, or it lingers as a zombie.

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Make this process a child subreaper (Linux 3.4): orphans of its descendants are reparented
/// to it instead of to PID 1.
pub fn become_subreaper() -> nix::Result<()> {
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    Errno::result(rc).map(drop)
}

/// Collect every status that is ready now, without blocking. Stops are reported too
/// (`WUNTRACED`), so that the supervisor can follow its main process's job control.
pub fn reap_ready() -> Vec<WaitStatus> {
    let mut out = Vec::new();
    loop {
        match waitpid(
            Pid::from_raw(-1),
            Some(WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED),
        ) {
            Ok(WaitStatus::StillAlive) => break,
            Ok(st) => out.push(st),
            Err(Errno::EINTR) => continue,
            Err(_) => break, // ECHILD: no children at all
        }
    }
    out
}
