//! The guardian: a tiny process forked by the supervisor before the job starts, outside the
//! job cgroup, in a session of its own, ignoring the usual signals. It holds the read end of a
//! pipe whose only writer is the supervisor. When the supervisor ends normally it writes one
//! byte and the guardian exits; when the supervisor dies — even by SIGKILL — the pipe reports
//! EOF and the guardian kills the whole job cgroup, waits for it to empty and removes it, so
//! that no job runs on unsupervised.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use crate::cgroup::{kill, Cgroup, EventsFile, KillMethod};

/// The supervisor's handle on its guardian.
#[derive(Debug)]
pub struct Guardian {
    pid: i32,
    tx: Option<OwnedFd>,
}

const DONE: u8 = b'd';

impl Guardian {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Fork the guardian for `cg`.
    pub fn start(cg: &Cgroup, method: KillMethod) -> io::Result<Guardian> {
        let mut fds = [0; 2];
        // SAFETY: fds is a two-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptors we own.
        let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: cgjob is single-threaded here, so the child may run ordinary code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            drop(tx);
            guard(rx, cg, method);
        }
        drop(rx);
        Ok(Guardian { pid, tx: Some(tx) })
    }

    /// The job is over: tell the guardian to exit, and reap it.
    pub fn release(self) {
        self.dismiss().reap();
    }

    /// Tell the guardian to exit, without waiting for it.
    pub fn dismiss(mut self) -> Dismissed {
        if let Some(tx) = self.tx.take() {
            // SAFETY: one-byte write to our pipe.
            unsafe { libc::write(tx.as_raw_fd(), [DONE].as_ptr().cast(), 1) };
        }
        Dismissed { pid: self.pid }
    }
}

/// A guardian told to exit. Dropping it reaps it (it exits at once), so that it never lingers
/// as a zombie, whichever way cgjob leaves.
#[derive(Debug)]
pub struct Dismissed {
    pid: i32,
}

impl Dismissed {
    pub fn reap(self) {}
}

impl Drop for Dismissed {
    fn drop(&mut self) {
        let _ = waitpid(Pid::from_raw(self.pid), None);
    }
}

/// The guardian's whole life. Never returns.
fn guard(rx: OwnedFd, cg: &Cgroup, method: KillMethod) -> ! {
    // SAFETY: plain syscalls in a fresh single-threaded child.
    unsafe {
        // Out of the terminal's process group and session: Ctrl-C and hang-ups are not for us.
        libc::setsid();
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGTSTP,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGPIPE,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // Hold nothing of the job's: stdin and stdout to /dev/null (a reader of the job's
        // output must not wait for us), every other inherited descriptor closed but stderr and
        // the pipe.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
        }
        let keep = rx.as_raw_fd();
        libc::dup2(keep, 3);
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
    }
    let mut b = [0u8; 1];
    let n = loop {
        // SAFETY: read into a one-byte buffer from fd 3, our pipe.
        let n = unsafe { libc::read(3, b.as_mut_ptr().cast(), 1) };
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        break n;
    };
    if n == 1 && b[0] == DONE {
        // SAFETY: exit without running the parent's atexit handlers or destructors.
        unsafe { libc::_exit(0) };
    }
    // The supervisor is gone without saying goodbye.
    let code = match cleanup(cg, method) {
        Ok(true) => {
            eprintln!(
                "cgjob: the supervisor died; killed job cgroup {} and removed it",
                cg.path().display()
            );
            0
        }
        Ok(false) => {
            eprintln!(
                "cgjob: the supervisor died; job cgroup {} could not be emptied and was left in place",
                cg.path().display()
            );
            1
        }
        Err(e) => {
            eprintln!(
                "cgjob: the supervisor died; cleaning up {} failed: {e}",
                cg.path().display()
            );
            1
        }
    };
    // SAFETY: as above.
    unsafe { libc::_exit(code) }
}

/// Kill everything in the cgroup until it is empty (bounded), then remove it.
fn cleanup(cg: &Cgroup, method: KillMethod) -> Result<bool, Box<dyn std::error::Error>> {
    let events = match EventsFile::open(cg.path()) {
        Ok(e) => e,
        Err(e) if e.is_gone() => return Ok(true),
        Err(e) => return Err(e.into()),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        kill::kill_pass(
            cg,
            &events,
            method,
            Instant::now() + Duration::from_millis(500),
        )?;
        let step = (Instant::now() + Duration::from_millis(200)).min(deadline);
        let (_, empty) = events.wait_until(step, |e| !e.populated)?;
        if empty {
            break;
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
    cg.remove()?;
    Ok(true)
}
