//! Starting the job's main process *inside* its cgroup: clone3 with `CLONE_INTO_CGROUP` (5.7+)
//! so it is born there; where the kernel refuses, a plain fork whose child writes itself into
//! `cgroup.procs` before it execs. Never "spawn, then move" — a process moved in after it ran
//! could already have forked outside. Without a cgroup (containment by PID namespace or by
//! process tree), a plain clone3 with a pidfd.
//!
//! Between the clone and `execve` the child runs only async-signal-safe calls on data prepared
//! beforehand (tini's rule): no allocation, no locks, no logging. An exec failure is reported
//! through a close-on-exec pipe.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use nix::sys::signal::SigSet;

use super::pidfd::PidFd;
use crate::cgroup::{Cgroup, CgroupFsError};

/// `libc::CLONE_INTO_CGROUP` is a 32-bit constant that overflows to 0, and the child silently
/// lands in the parent's cgroup. The flag is bit 33.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
const CLONE_PIDFD: u64 = 0x1000;

/// `struct clone_args`, version 2 (with `cgroup`, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// How to start the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpawnMethod {
    /// clone3 into the cgroup, falling back to fork + join when the kernel refuses.
    #[default]
    Clone3,
    /// fork; the child joins the cgroup before exec.
    ForkJoin,
    /// No cgroup to be born into (PID-namespace and subreaper containment).
    Plain,
}

impl std::fmt::Display for SpawnMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SpawnMethod::Clone3 => "clone3",
            SpawnMethod::ForkJoin => "fork-join",
            SpawnMethod::Plain => "plain",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("command not found: {0}")]
    NotFound(String),
    #[error("cannot execute {program}")]
    NotExecutable {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("the child could not join the cgroup before exec")]
    Join(#[source] io::Error),
    #[error("the child could not join its cgroup v1 cgroups before exec")]
    JoinV1(#[source] io::Error),
    /// The v2 migration rule: starting a process in a cgroup needs write access to
    /// `cgroup.procs` of the common ancestor of the caller's cgroup and the target.
    #[error("not allowed to start a process in {0} (permission denied); an unprivileged cgjob must itself run inside the delegated subtree that holds the job cgroup")]
    CgroupPermission(std::path::PathBuf),
    #[error("cannot start a process")]
    Clone(#[source] io::Error),
    #[error("invalid command: {0}")]
    Invalid(String),
    #[error(transparent)]
    Cgroup(#[from] CgroupFsError),
}

/// What the child is to do, prepared before the clone.
pub struct SpawnSpec<'a> {
    pub argv: &'a [OsString],
    /// The cgroup to start it in; `None`: where cgjob is.
    pub cgroup: Option<&'a Cgroup>,
    pub method: SpawnMethod,
    /// A signal the child gets when cgjob dies (`PR_SET_PDEATHSIG`), for containment without
    /// a guardian.
    pub parent_death_signal: Option<i32>,
    /// Give this terminal's foreground to the child's new process group.
    pub foreground_tty: Option<RawFd>,
    /// The signal mask to restore in the child (cgjob's own mask from before it blocked its
    /// supervisor signals).
    pub sigmask: SigSet,
    /// RLIMIT_NOFILE to restore in the child, if cgjob raised its own.
    pub nofile: Option<libc::rlimit>,
    /// `cgroup.procs` of cgroup v1 cgroups the child writes itself into before exec (v1 has
    /// no clone3 into a cgroup): the limits of hybrid hosts.
    pub v1_joins: &'a [OwnedFd],
}

/// A started process.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub pidfd: PidFd,
    /// How it got into the cgroup.
    pub method: SpawnMethod,
}

const STAGE_JOIN: u8 = 1;
const STAGE_EXEC: u8 = 2;
const STAGE_JOIN_V1: u8 = 3;

/// Everything the child touches, owned by the parent.
struct ChildCtx {
    candidates: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    join_fd: Option<RawFd>,
    v1_joins: Vec<RawFd>,
    err_fd: RawFd,
    tty: Option<RawFd>,
    sigmask: libc::sigset_t,
    nofile: Option<libc::rlimit>,
    sigpipe: libc::sighandler_t,
    /// (signal, the parent's pid) for `PR_SET_PDEATHSIG`.
    pdeathsig: Option<(i32, i32)>,
}

fn cstr(s: &[u8], what: &str) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError::Invalid(format!("{what} contains a NUL byte")))
}

/// The paths `execvp` would try, computed in the parent so that the child does not allocate.
fn candidates(program: &[u8], path: Option<OsString>) -> Result<Vec<CString>, SpawnError> {
    if program.contains(&b'/') {
        return Ok(vec![cstr(program, "the command")?]);
    }
    let path = path.unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    let mut out = Vec::new();
    for dir in path.as_bytes().split(|c| *c == b':') {
        let dir = if dir.is_empty() { &b"."[..] } else { dir };
        let mut p = dir.to_vec();
        p.push(b'/');
        p.extend_from_slice(program);
        out.push(cstr(&p, "the command")?);
    }
    Ok(out)
}

/// Start `spec.argv` in `spec.cgroup`. The exec is still under way when this returns.
pub fn spawn(spec: &SpawnSpec<'_>) -> Result<Started, SpawnError> {
    let program = spec
        .argv
        .first()
        .ok_or_else(|| SpawnError::Invalid("empty command".into()))?;
    if program.is_empty() {
        return Err(SpawnError::Invalid("empty command name".into()));
    }
    let argv_c: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| cstr(a.as_bytes(), "an argument"))
        .collect::<Result<_, _>>()?;
    let env_c: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            cstr(&kv, "the environment")
        })
        .collect::<Result<_, _>>()?;
    let mut argv: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env_c.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());

    let (err_r, err_w) = pipe_cloexec().map_err(SpawnError::Clone)?;
    let mut ctx = ChildCtx {
        candidates: candidates(program.as_bytes(), std::env::var_os("PATH"))?,
        argv,
        envp,
        join_fd: None,
        v1_joins: spec.v1_joins.iter().map(|f| f.as_raw_fd()).collect(),
        err_fd: err_w.as_raw_fd(),
        tty: spec.foreground_tty,
        sigmask: *spec.sigmask.as_ref(),
        nofile: spec.nofile,
        sigpipe: super::signals::inherited_sigpipe(),
        // SAFETY: getpid has no preconditions.
        pdeathsig: spec
            .parent_death_signal
            .map(|sig| (sig, unsafe { libc::getpid() })),
    };

    let (pid, pidfd, method) = match (spec.cgroup, spec.method) {
        (None, _) | (Some(_), SpawnMethod::Plain) => plain(&ctx)?,
        (Some(cg), SpawnMethod::Clone3) => {
            let dir = cg.open_dir()?;
            match clone3_into(Some(&dir), &ctx) {
                Ok((pid, pidfd)) => (pid, pidfd, SpawnMethod::Clone3),
                Err(e) if clone3_refused(&e) => {
                    tracing::debug!(error = %e, "clone3 into the cgroup refused; the child will join before exec");
                    fork_join(cg, &mut ctx)?
                }
                Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                    return Err(SpawnError::CgroupPermission(cg.path().into()))
                }
                Err(e) => return Err(SpawnError::Clone(e)),
            }
        }
        (Some(cg), SpawnMethod::ForkJoin) => fork_join(cg, &mut ctx)?,
    };
    drop(err_w);
    drop(argv_c);

    // Give the terminal to the child's group from this side too, so that neither order of
    // the two calls leaves the child in the background.
    if let Some(tty) = spec.foreground_tty {
        // SAFETY: plain syscalls.
        unsafe {
            libc::setpgid(pid, pid);
            libc::tcsetpgrp(tty, pid);
        }
    }
    Ok(Started {
        spawned: Spawned { pid, pidfd, method },
        err_r,
        program: program.to_string_lossy().into_owned(),
        cgroup: spec.cgroup.map(|c| c.path().to_owned()).unwrap_or_default(),
    })
}

/// A child between clone and exec: the caller may do other work while the kernel loads the
/// command, then learns from [`Started::wait_exec`] whether the exec happened.
#[derive(Debug)]
pub struct Started {
    spawned: Spawned,
    err_r: OwnedFd,
    program: String,
    cgroup: std::path::PathBuf,
}

impl Started {
    pub fn pid(&self) -> i32 {
        self.spawned.pid
    }

    pub fn pidfd(&self) -> &PidFd {
        &self.spawned.pidfd
    }

    /// Wait for the exec: EOF on the close-on-exec pipe means it happened; five bytes mean
    /// it failed (the child then exits 127 and is reaped here: it never ran the command).
    pub fn wait_exec(self) -> Result<Spawned, SpawnError> {
        let mut buf = [0u8; 5];
        if read_full(&self.err_r, &mut buf) != 5 {
            return Ok(self.spawned);
        }
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.spawned.pid), None);
        let errno = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
        let err = io::Error::from_raw_os_error(errno);
        Err(match (buf[0], errno) {
            (STAGE_JOIN, libc::EACCES | libc::EPERM) => SpawnError::CgroupPermission(self.cgroup),
            (STAGE_JOIN, _) => SpawnError::Join(err),
            (STAGE_JOIN_V1, _) => SpawnError::JoinV1(err),
            (_, libc::ENOENT) | (_, libc::ENOTDIR) => SpawnError::NotFound(self.program),
            _ => SpawnError::NotExecutable {
                program: self.program,
                source: err,
            },
        })
    }
}

/// Replace the calling process with `argv` (searched in PATH as `execvp` does): what a job
/// wrapper does once it has joined its cgroup. Returns only on failure, with the reason.
pub fn exec_in_place(argv: &[OsString]) -> SpawnError {
    let program = match argv.first() {
        Some(p) if !p.is_empty() => p.to_string_lossy().into_owned(),
        _ => return SpawnError::Invalid("empty command".into()),
    };
    let argv_c: Vec<CString> = match argv
        .iter()
        .map(|a| cstr(a.as_bytes(), "an argument"))
        .collect()
    {
        Ok(v) => v,
        Err(e) => return e,
    };
    let mut ptrs: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // cgjob ignores SIGPIPE for itself; the command gets what cgjob was started with (an
    // ignored signal stays ignored across exec), as a spawned one does.
    // SAFETY: signal with a valid disposition; a NULL-terminated argv of valid C strings;
    // execvp returns only on failure.
    unsafe {
        libc::signal(libc::SIGPIPE, super::signals::inherited_sigpipe());
        libc::execvp(ptrs[0], ptrs.as_ptr());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => SpawnError::NotFound(program),
        _ => SpawnError::NotExecutable {
            program,
            source: err,
        },
    }
}

/// clone3 errors that mean "this kernel or sandbox will not put a child into a cgroup this
/// way": no clone3 (ENOSYS, < 5.3), no `cgroup` field (E2BIG, 5.3–5.6), a threaded or invalid
/// target (EOPNOTSUPP, EINVAL, EBUSY), or a seccomp filter (EPERM). Resource shortages are
/// real errors.
fn clone3_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOSYS
                | libc::E2BIG
                | libc::EOPNOTSUPP
                | libc::EINVAL
                | libc::EBUSY
                | libc::EPERM
        )
    )
}

/// clone3 with a pidfd, into the cgroup of `dir` when given.
fn clone3_into(dir: Option<&OwnedFd>, ctx: &ChildCtx) -> io::Result<(i32, PidFd)> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: CLONE_PIDFD | dir.map_or(0, |_| CLONE_INTO_CGROUP),
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir.map_or(0, |d| d.as_raw_fd() as u64),
        ..Default::default()
    };
    let rc = clone3_spawn(&mut args, ctx);
    if rc < 0 {
        return Err(io::Error::from_raw_os_error(-rc as i32));
    }
    // SAFETY: the kernel stored a fresh pidfd for us.
    let fd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok((rc as i32, PidFd::from_owned(fd, rc as i32)))
}

/// clone3 that runs `child_exec(ctx)` in the child and returns the child's pid (or -errno)
/// in the parent.
///
/// On x86_64 the child shares our memory and we wait until it has exec'd (`CLONE_VM |
/// CLONE_VFORK`, on a stack of its own), as glibc's posix_spawn does: no page tables are
/// copied and neither side takes copy-on-write faults afterwards. That is safe because the
/// child only makes system calls on data prepared beforehand, writes nothing but its own
/// stack (and errno, which we do not read meanwhile: we are suspended), and runs no signal
/// handler (cgjob installs none; every signal is blocked until just before exec). glibc has
/// no clone3 wrapper that takes a function, hence the few lines of assembly: after the
/// syscall, the child — on the new stack — calls `child_exec`, which never returns.
#[cfg(target_arch = "x86_64")]
fn clone3_spawn(args: &mut CloneArgs, ctx: &ChildCtx) -> i64 {
    const STACK: usize = 64 * 1024;
    let mut stack = vec![0u128; STACK / 16]; // 16-byte aligned
    args.flags |= (libc::CLONE_VM | libc::CLONE_VFORK) as u64;
    args.stack = stack.as_mut_ptr() as u64;
    args.stack_size = STACK as u64;
    extern "C" fn entry(ctx: *const ChildCtx) -> ! {
        // SAFETY: `ctx` points into the parent's memory, which we share and which stays put:
        // the parent is suspended until we exec or exit.
        child_exec(unsafe { &*ctx })
    }
    let ret: i64;
    // SAFETY: a clone3 system call. In the parent it returns like any syscall. In the child
    // (rax = 0) the kernel has set rsp to the top of `stack`; we call `entry`, which never
    // returns; r12/r13 hold its argument and address in both (registers are copied).
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") ctx as *const ChildCtx,
            in("r13") entry as extern "C" fn(*const ChildCtx) -> !,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    drop(stack);
    ret
}

/// Elsewhere, clone3 as a fork: the child gets a copy of our memory.
#[cfg(not(target_arch = "x86_64"))]
fn clone3_spawn(args: &mut CloneArgs, ctx: &ChildCtx) -> i64 {
    // SAFETY: without CLONE_VM, clone3 behaves like fork: the child returns 0 here and runs
    // only async-signal-safe code in `child_exec`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if rc == 0 {
        child_exec(ctx);
    }
    if rc < 0 {
        -(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL) as i64)
    } else {
        rc
    }
}

/// Without a cgroup: clone3 for the pidfd; a fork and `pidfd_open` where there is no clone3
/// (the child is ours and unreaped, so its pid cannot name another process meanwhile).
fn plain(ctx: &ChildCtx) -> Result<(i32, PidFd, SpawnMethod), SpawnError> {
    match clone3_into(None, ctx) {
        Ok((pid, pidfd)) => return Ok((pid, pidfd, SpawnMethod::Plain)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {}
        Err(e) => return Err(SpawnError::Clone(e)),
    }
    // SAFETY: the child runs only async-signal-safe code in `child_exec`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(SpawnError::Clone(io::Error::last_os_error()));
    }
    if pid == 0 {
        child_exec(ctx);
    }
    let pidfd = PidFd::open(pid)
        .map_err(SpawnError::Clone)?
        .ok_or_else(|| SpawnError::Clone(io::Error::from_raw_os_error(libc::ESRCH)))?;
    Ok((pid, pidfd, SpawnMethod::Plain))
}

/// Whether the kernel starts children in a cgroup with clone3 (`CLONE_INTO_CGROUP`, 5.7),
/// asked without starting one: a clone3 naming a descriptor that cannot be open fails with
/// EBADF on such kernels, before any child exists; older kernels (or a seccomp filter)
/// answer E2BIG, EINVAL, ENOSYS or EPERM first. Returns that errno otherwise.
pub fn probe_clone_into_cgroup() -> Result<(), i32> {
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        // The highest descriptor number the kernel accepts here, never open in cgjob.
        cgroup: i32::MAX as u64,
        ..Default::default()
    };
    // SAFETY: a clone3 that fails before creating a process (see above). Without CLONE_VM
    // it would act as fork: should it ever succeed, the child exits at once.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match rc {
        // SAFETY: the child of a fork exits without running anything.
        0 => unsafe { libc::_exit(0) },
        rc if rc > 0 => {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(rc as i32), None);
            Ok(())
        }
        _ => match errno() {
            libc::EBADF => Ok(()),
            e => Err(e),
        },
    }
}

fn fork_join(cg: &Cgroup, ctx: &mut ChildCtx) -> Result<(i32, PidFd, SpawnMethod), SpawnError> {
    let procs = cg.open_procs_for_join()?;
    ctx.join_fd = Some(procs.as_raw_fd());
    // SAFETY: the child runs only async-signal-safe code in `child_exec`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(SpawnError::Clone(io::Error::last_os_error()));
    }
    if pid == 0 {
        child_exec(ctx);
    }
    drop(procs);
    // The child is ours and unreaped, so its pid cannot be reused before this open.
    let pidfd = PidFd::open(pid)
        .map_err(SpawnError::Clone)?
        .ok_or_else(|| SpawnError::Clone(io::Error::from_raw_os_error(libc::ESRCH)))?;
    Ok((pid, pidfd, SpawnMethod::ForkJoin))
}

/// The child, between clone and exec. Async-signal-safe calls only.
fn child_exec(ctx: &ChildCtx) -> ! {
    // SAFETY: raw syscalls on data prepared by the parent; nothing here allocates.
    unsafe {
        if let Some((sig, parent)) = ctx.pdeathsig {
            libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0);
            // The parent may have died before the prctl: then nobody will send it.
            if libc::getppid() != parent {
                libc::kill(libc::getpid(), sig);
                libc::_exit(127);
            }
        }
        // v1 first: once in them, the process is under the job's limits before it execs.
        for fd in &ctx.v1_joins {
            if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                child_fail(ctx.err_fd, STAGE_JOIN_V1, errno());
            }
        }
        if let Some(fd) = ctx.join_fd {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                child_fail(ctx.err_fd, STAGE_JOIN, errno());
            }
        }
        // Its own process group, so that a terminal's job control and a group signal address
        // the job, not cgjob.
        libc::setpgid(0, 0);
        if let Some(tty) = ctx.tty {
            // SIGTTOU is still blocked here, so this succeeds from the background.
            libc::tcsetpgrp(tty, libc::getpid());
        }
        // cgjob ignores SIGPIPE; the command gets the disposition cgjob was started with.
        libc::signal(libc::SIGPIPE, ctx.sigpipe);
        if let Some(lim) = ctx.nofile {
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::sigprocmask(libc::SIG_SETMASK, &ctx.sigmask, std::ptr::null_mut());

        let mut saw_eacces = false;
        let mut last = libc::ENOENT;
        for c in &ctx.candidates {
            libc::execve(c.as_ptr(), ctx.argv.as_ptr(), ctx.envp.as_ptr());
            last = errno();
            match last {
                libc::EACCES => saw_eacces = true,
                // As execvp: keep searching past these.
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                _ => break,
            }
        }
        if saw_eacces && matches!(last, libc::ENOENT | libc::ENOTDIR) {
            last = libc::EACCES;
        }
        child_fail(ctx.err_fd, STAGE_EXEC, last)
    }
}

fn child_fail(fd: RawFd, stage: u8, err: i32) -> ! {
    let e = err.to_le_bytes();
    let buf = [stage, e[0], e[1], e[2], e[3]];
    // SAFETY: async-signal-safe write and _exit.
    unsafe {
        libc::write(fd, buf.as_ptr().cast(), buf.len());
        libc::_exit(127)
    }
}

fn errno() -> i32 {
    // SAFETY: reads the thread's errno.
    unsafe { *libc::__errno_location() }
}

fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into the unfilled tail of buf.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    got
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_into_cgroup_is_bit_33() {
        assert_eq!(CLONE_INTO_CGROUP, 1u64 << 33);
        assert_eq!(std::mem::size_of::<CloneArgs>(), 88);
    }

    #[test]
    fn this_kernel_starts_children_in_a_cgroup() {
        // Linux 5.7+ (this suite needs 6.x): the probe must say so, and start nothing.
        assert_eq!(probe_clone_into_cgroup(), Ok(()));
    }

    #[test]
    fn candidates_follow_path() {
        let c = candidates(b"prog", Some("/a::/b".into())).unwrap();
        let got: Vec<&str> = c.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(got, vec!["/a/prog", "./prog", "/b/prog"]);
        let c = candidates(b"./x/prog", None).unwrap();
        assert_eq!(c.len(), 1);
        assert!(candidates(b"a\0b", None).is_err());
        assert_eq!(candidates(b"p", None).unwrap().len(), 3);
    }
}
