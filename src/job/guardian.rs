//! The guardian: a tiny process the supervisor starts before the job, outside the job cgroup,
//! in a session of its own, with every signal blocked. It holds the read end of a pipe whose
//! only writer is the supervisor. When the supervisor ends normally it writes one byte and the
//! guardian exits; when the supervisor dies — even by SIGKILL — the pipe reports EOF and the
//! guardian kills the whole job cgroup, waits for it to empty and removes it, so that no job
//! runs on unsupervised.
//!
//! It is created with `clone(CLONE_VM)` on a stack of its own, as glibc's posix_spawn creates
//! its children: a fork would copy the supervisor's page tables and make both sides take
//! copy-on-write faults just as the job starts, which measured as ~0.3 ms of every
//! `cgjob run`. Sharing the supervisor's memory has one rule: the guardian never allocates and
//! never takes a lock — the supervisor may die in the middle of `malloc`. Everything it needs is
//! prepared before the clone ([`Plan`]), and it makes plain system calls only. While the
//! supervisor lives it only sits in `read`, which cannot fail with every signal blocked, so
//! it never writes `errno` (which lives in the thread-local storage it shares).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use crate::cgroup::{Cgroup, KillMethod};

/// The supervisor's handle on its guardian.
#[derive(Debug)]
pub struct Guardian {
    pid: i32,
    tx: Option<OwnedFd>,
}

const DONE: u8 = b'd';
const STACK_SIZE: usize = 256 * 1024;
/// How long the guardian keeps killing before it gives up on processes that will not die.
const GIVE_UP_MS: i64 = 10_000;

/// Everything the guardian touches after the supervisor is gone, built beforehand.
struct Plan {
    rx: RawFd,
    tx: RawFd,
    dir: CString,
    kill: CString,
    freeze: CString,
    procs: CString,
    events: CString,
    /// The job's cgroup v1 cgroups (limits on a hybrid host), removed after the v2 one.
    v1_dirs: Vec<CString>,
    method: KillMethod,
    gone_msg: Vec<u8>,
    stuck_msg: Vec<u8>,
}

impl Guardian {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Start the guardian for `cg` (and the v1 cgroups `v1` made beside it for limits).
    pub fn start(cg: &Cgroup, v1: &[&Cgroup], method: KillMethod) -> io::Result<Guardian> {
        let mut fds = [0; 2];
        // SAFETY: fds is a two-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptors we own.
        let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let c = |p: std::path::PathBuf| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
        };
        let shown = cg.path().display();
        // Leaked on purpose: the guardian may read it after the supervisor is gone, and the
        // supervisor never frees it while the guardian might.
        let plan: &'static Plan = Box::leak(Box::new(Plan {
            rx: rx.as_raw_fd(),
            tx: tx.as_raw_fd(),
            dir: c(cg.path().to_owned())?,
            kill: c(cg.file("cgroup.kill"))?,
            freeze: c(cg.file("cgroup.freeze"))?,
            procs: c(cg.file("cgroup.procs"))?,
            events: c(cg.file("cgroup.events"))?,
            v1_dirs: v1
                .iter()
                .map(|v| c(v.path().to_owned()))
                .collect::<io::Result<_>>()?,
            method,
            gone_msg: format!("cgjob: the supervisor died; killed job cgroup {shown} and removed it\n").into_bytes(),
            stuck_msg: format!("cgjob: the supervisor died; job cgroup {shown} could not be emptied and was left in place\n").into_bytes(),
        }));
        // SAFETY: an anonymous private mapping for the guardian's stack, never unmapped (the
        // guardian may outlive the supervisor).
        let stack = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                STACK_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if stack == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the stack grows down from its top; the guardian runs `guard` on it, sharing
        // our memory (CLONE_VM) but with its own copy of the descriptor table, signal
        // dispositions and mask. `plan` is 'static.
        let pid = unsafe {
            let top = (stack as *mut u8).add(STACK_SIZE);
            libc::clone(
                guard,
                top.cast(),
                libc::CLONE_VM | libc::SIGCHLD,
                plan as *const Plan as *mut libc::c_void,
            )
        };
        if pid < 0 {
            return Err(io::Error::last_os_error());
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

/// The guardian's whole life. Plain system calls only; no allocation, no locks.
extern "C" fn guard(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the leaked Plan; everything below is a system call on prepared data.
    unsafe {
        let plan = &*(arg as *const Plan);
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        // Out of the terminal's process group and session: job control is not for us.
        libc::setsid();
        // Hold nothing of the job's: stdin and stdout to /dev/null (a reader of the job's
        // output must not wait for us), the pipe as fd 3, every other descriptor closed
        // (above all our copy of the pipe's write end, or EOF would never come).
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
        }
        libc::close(plan.tx);
        libc::dup2(plan.rx, 3);
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);

        let mut b = [0u8; 1];
        let n = libc::read(3, b.as_mut_ptr().cast(), 1);
        if n == 1 && b[0] == DONE {
            libc::_exit(0);
        }
        // The supervisor is gone without saying goodbye.
        let msg = if cleanup(plan) {
            &plan.gone_msg
        } else {
            &plan.stuck_msg
        };
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(0)
    }
}

/// Kill passes until the cgroup is empty (bounded), then remove it. Returns whether the
/// cgroup is gone. A cgroup already gone is done.
///
/// # Safety
/// Plain system calls on prepared data only.
unsafe fn cleanup(plan: &Plan) -> bool {
    let events = libc::open(plan.events.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
    if events < 0 {
        return true;
    }
    let start = now_ms();
    loop {
        match plan.method {
            KillMethod::CgroupKill => write_file(&plan.kill, b"1"),
            KillMethod::Freeze => freeze_kill_thaw(plan, events),
        }
        if wait_empty(events, 200) {
            break;
        }
        if now_ms() - start > GIVE_UP_MS {
            libc::close(events);
            return false;
        }
    }
    libc::close(events);
    if !rmdir_retry(&plan.dir) {
        return false;
    }
    // The v1 cgroups of the limits held the same processes: empty too.
    for d in &plan.v1_dirs {
        rmdir_retry(d);
    }
    true
}

/// rmdir, retried: it can fail with EBUSY for a moment after the last task left. A cgroup
/// already gone counts as removed.
///
/// # Safety
/// A plain system call on a prepared path.
unsafe fn rmdir_retry(dir: &CString) -> bool {
    for i in 0..10 {
        if libc::rmdir(dir.as_ptr()) == 0 {
            return true;
        }
        if *libc::__errno_location() == libc::ENOENT {
            return true;
        }
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000 << i,
        };
        libc::nanosleep(&ts, std::ptr::null_mut());
    }
    false
}

/// The fallback kill: freeze, SIGKILL every pid listed (through pidfds), thaw.
///
/// # Safety
/// Plain system calls on prepared data only.
unsafe fn freeze_kill_thaw(plan: &Plan, events: RawFd) {
    write_file(&plan.freeze, b"1");
    // Bounded: a task in uninterruptible sleep delays `frozen 1`.
    let start = now_ms();
    while !(events_say(events, b"frozen 1") || events_say(events, b"populated 0"))
        && now_ms() - start < 500
    {
        poll_pri(events, 50);
    }
    let fd = libc::open(plan.procs.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
    if fd >= 0 {
        let mut buf = [0u8; 8192];
        let mut pid: i32 = 0;
        let mut in_num = false;
        loop {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if n <= 0 {
                break;
            }
            for &c in &buf[..n as usize] {
                if c.is_ascii_digit() {
                    pid = pid * 10 + (c - b'0') as i32;
                    in_num = true;
                } else if in_num {
                    kill_pid(pid);
                    pid = 0;
                    in_num = false;
                }
            }
        }
        if in_num {
            kill_pid(pid);
        }
        libc::close(fd);
    }
    write_file(&plan.freeze, b"0");
}

/// # Safety
/// System calls only.
unsafe fn kill_pid(pid: i32) {
    let pfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
    if pfd >= 0 {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pfd,
            libc::SIGKILL,
            std::ptr::null::<u8>(),
            0,
        );
        libc::close(pfd as RawFd);
    }
}

/// # Safety
/// System calls only.
unsafe fn write_file(path: &CString, data: &[u8]) {
    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
    if fd >= 0 {
        libc::write(fd, data.as_ptr().cast(), data.len());
        libc::close(fd);
    }
}

/// Whether `cgroup.events` currently contains `needle` (read from offset 0).
///
/// # Safety
/// System calls only.
unsafe fn events_say(events: RawFd, needle: &[u8]) -> bool {
    let mut buf = [0u8; 256];
    let n = libc::pread(events, buf.as_mut_ptr().cast(), buf.len(), 0);
    n > 0 && buf[..n as usize].windows(needle.len()).any(|w| w == needle)
}

/// Wait up to `ms` for a change notification on `cgroup.events`.
///
/// # Safety
/// System calls only.
unsafe fn poll_pri(events: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: events,
        events: libc::POLLPRI,
        revents: 0,
    };
    libc::poll(&mut p, 1, ms) > 0
}

/// Wait, event-driven and bounded by `ms`, for `populated 0`.
///
/// # Safety
/// System calls only.
unsafe fn wait_empty(events: RawFd, ms: i64) -> bool {
    let start = now_ms();
    loop {
        if events_say(events, b"populated 0") {
            return true;
        }
        let left = ms - (now_ms() - start);
        if left <= 0 {
            return false;
        }
        poll_pri(events, left as i32);
    }
}

fn now_ms() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime into a local (vDSO, no errno on success).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}
